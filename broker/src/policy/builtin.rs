//! The built-in policy compiled ahead of time for regorus's VM: `cordon run`
//! without `--policy` starts without parsing and compiling it (~3 ms of its
//! start; the program deserializes in ~0.1 ms).
//!
//! `builtin.rvm` is a 32-byte SHA-256, then the program as regorus serializes
//! it. The digest covers what the program was compiled from and by (the
//! sources, `policies/default.rego` and the decision wrapper; the regorus
//! version that wrote it, as this binary's regorus names itself; the entry
//! points) and the program's bytes. A file whose digest does not match (an
//! edit of the policy without `CORDON_BLESS=1`, see the test; another
//! regorus, whose encoding of instructions may differ; a damaged file), or
//! that this regorus cannot read whole, is not used: the policy is compiled
//! at load as before, so a stale file costs time, not a decision. The test
//! `the_stored_program_is_the_builtin_policy_compiled` fails until the file is
//! written again.

use regorus::rvm::{Program, program::DeserializationResult};
use sha2::{Digest, Sha256};

use super::{DEFAULT_POLICY, RESULT_RULE, WRAPPER};

/// The program's entry points: the decision, and the backstop every sandbox
/// evaluates at its start.
pub(super) const ENTRY_POINTS: [&str; 2] = [RESULT_RULE, BACKSTOP_RULE];

pub(super) const BACKSTOP_RULE: &str = "data.cordon.backstop";

const STORED: &[u8] = include_bytes!("builtin.rvm");

/// What `program` was compiled from and by, and the program itself.
fn digest(program: &[u8]) -> [u8; 32] {
    let compiler = Program::new().metadata.compiler_version;
    let entry_points = ENTRY_POINTS.join("\n");
    digest_of([
        DEFAULT_POLICY.as_bytes(),
        WRAPPER.as_bytes(),
        compiler.as_bytes(),
        entry_points.as_bytes(),
        program,
    ])
}

/// Each part length-prefixed: no two lists of parts hash alike.
fn digest_of(parts: [&[u8]; 5]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The stored program, when it was compiled from this binary's sources.
pub(super) fn precompiled() -> Option<Program> {
    read(STORED)
}

fn read(stored: &[u8]) -> Option<Program> {
    let (stored_digest, program) = stored.split_at_checked(32)?;
    if stored_digest != digest(program) {
        tracing::debug!("the stored built-in program is stale: compiling the policy");
        return None;
    }
    match Program::deserialize_binary(program) {
        Ok(DeserializationResult::Complete(p)) => Some(p),
        Ok(DeserializationResult::Partial(_)) | Err(_) => {
            tracing::debug!("the stored built-in program cannot be read: compiling the policy");
            None
        }
    }
}

/// The file's contents for `program`, compiled from this binary's sources.
#[cfg(test)]
fn stored_form(program: &Program) -> Result<Vec<u8>, String> {
    let program = program.serialize_binary()?;
    let mut out = digest(&program).to_vec();
    out.extend(program);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LoadedPolicy, PolicyOptions, PolicySource, SourceSet, build_engine};

    fn compiled_now() -> Program {
        let sources = SourceSet::read(&PolicySource::Builtin).unwrap();
        let data = sources.data_value().unwrap();
        let mut engine = build_engine(&sources, &data, true).unwrap();
        super::super::compile_vm(&mut engine, &ENTRY_POINTS)
            .unwrap()
            .program
            .as_ref()
            .clone()
    }

    /// `CORDON_BLESS=1 cargo test -p cordon-broker stored_program` writes
    /// the file again after an edit of the policy (or of regorus).
    #[test]
    fn the_stored_program_is_the_builtin_policy_compiled() {
        let fresh = stored_form(&compiled_now()).unwrap();
        if fresh != STORED && std::env::var_os("CORDON_BLESS").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy/builtin.rvm");
            std::fs::write(path, &fresh).unwrap();
            // This build holds the old file: it fails until built again.
            panic!("wrote {path}: run the tests again (without CORDON_BLESS)");
        }
        assert!(
            fresh == STORED,
            "broker/src/policy/builtin.rvm is not policies/default.rego compiled: \
             run `CORDON_BLESS=1 cargo test -p cordon-broker stored_program`"
        );
        assert!(precompiled().is_some());
    }

    #[test]
    fn a_stored_program_of_other_sources_or_unreadable_is_not_used() {
        assert!(read(STORED).is_some());
        let mut other = STORED.to_vec();
        other[0] ^= 1;
        assert!(read(&other).is_none(), "compiled from other sources");
        let mut damaged = STORED.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(read(&damaged).is_none(), "a byte of the program changed");
        assert!(read(&STORED[..STORED.len() - 1]).is_none(), "truncated");
        assert!(read(&STORED[..31]).is_none(), "no digest");
        let junk = b"not a program";
        let mut unreadable = digest(junk).to_vec();
        unreadable.extend(junk);
        assert!(read(&unreadable).is_none(), "a matching digest, no program");
        // Every part counts: the policy, the wrapper, the compiler's version,
        // the entry points, the program.
        let (_, program) = STORED.split_at(32);
        let compiler = Program::new().metadata.compiler_version;
        let entry_points = ENTRY_POINTS.join("\n");
        let parts: [&[u8]; 5] = [
            DEFAULT_POLICY.as_bytes(),
            WRAPPER.as_bytes(),
            compiler.as_bytes(),
            entry_points.as_bytes(),
            program,
        ];
        assert_eq!(digest_of(parts), digest(program));
        for i in 0..parts.len() {
            let mut changed = parts;
            let longer = [parts[i], b" "].concat();
            changed[i] = &longer;
            assert_ne!(digest_of(changed), digest(program), "part {i}");
        }
        // The built-in policy loads from it, and parses only when asked.
        let policy = LoadedPolicy::load(&PolicySource::Builtin, &PolicyOptions::default()).unwrap();
        assert!(policy.interpreter.get().is_none(), "parsed at load");
        assert_eq!(policy.engine_name(), "rvm");
    }
}
