//! Reading (and, for `sendmmsg`'s byte counts, writing) the tool's memory.
//!
//! Every read is bounded by the caller (PATH_MAX, sockaddr size, argv limits).
//! Strings are read page by page because `process_vm_readv` does not read an
//! iovec partially across an unmapped page. A read that fails is `EFAULT` for
//! the tool, never a fall-through. Callers re-check the notification id after
//! reading: only then do the bytes belong to the task that made the call.

use std::io::{IoSlice, IoSliceMut};

use nix::{
    errno::Errno,
    sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev},
    unistd::Pid,
};

const PAGE: usize = 4096;

/// The address space of one tool thread.
#[derive(Debug, Clone, Copy)]
pub struct ToolMemory {
    pid: Pid,
}

impl ToolMemory {
    pub fn new(tid: i32) -> Self {
        Self {
            pid: Pid::from_raw(tid),
        }
    }

    /// Exactly `len` bytes at `addr`, or `EFAULT`.
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; len];
        if len == 0 {
            return Ok(buf);
        }
        if addr == 0 {
            return Err(Errno::EFAULT);
        }
        let n = process_vm_readv(
            self.pid,
            &mut [IoSliceMut::new(&mut buf)],
            &[RemoteIoVec {
                base: addr as usize,
                len,
            }],
        )
        .map_err(|e| if e == Errno::ESRCH { e } else { Errno::EFAULT })?;
        if n != len {
            return Err(Errno::EFAULT);
        }
        Ok(buf)
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, Errno> {
        let b = self.read(addr, 8)?;
        Ok(u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    }

    /// A NUL-terminated string of at most `max` bytes (without the NUL).
    /// Longer strings are `ENAMETOOLONG` (or `E2BIG` as the caller maps it).
    pub fn read_cstr(&self, addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
        if addr == 0 {
            return Err(Errno::EFAULT);
        }
        let mut out = Vec::new();
        let mut at = addr;
        loop {
            let to_page_end = PAGE - (at as usize % PAGE);
            let want = to_page_end.min(max + 1 - out.len());
            let chunk = self.read(at, want)?;
            if let Some(nul) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
            if out.len() > max {
                return Err(Errno::ENAMETOOLONG);
            }
            // Tool-given addresses may sit at the top of the range: wrap
            // rather than overflow (the read then fails: EFAULT).
            at = at.wrapping_add(want as u64);
        }
    }

    /// A NULL-terminated array of string pointers (argv), bounded in count
    /// and total size: `E2BIG` beyond, as the kernel would say.
    pub fn read_argv(
        &self,
        addr: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, Errno> {
        let mut argv = Vec::new();
        if addr == 0 {
            return Ok(argv);
        }
        let mut total = 0;
        for i in 0.. {
            if i >= max_count {
                return Err(Errno::E2BIG);
            }
            let ptr = self.read_u64(addr.wrapping_add(8 * i as u64))?;
            if ptr == 0 {
                break;
            }
            let arg = self
                .read_cstr(ptr, max_bytes.saturating_sub(total))
                .map_err(|e| {
                    if e == Errno::ENAMETOOLONG {
                        Errno::E2BIG
                    } else {
                        e
                    }
                })?;
            total += arg.len() + 1;
            argv.push(arg);
        }
        Ok(argv)
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
        let n = process_vm_writev(
            self.pid,
            &[IoSlice::new(bytes)],
            &[RemoteIoVec {
                base: addr as usize,
                len: bytes.len(),
            }],
        )
        .map_err(|_| Errno::EFAULT)?;
        if n != bytes.len() {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }
}
