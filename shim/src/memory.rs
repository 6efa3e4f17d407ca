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
/// The most of a string read in its first step (see `read_cstr`).
const CSTR_FIRST_STEP: usize = 512;

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
        self.read_into(addr, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` from `addr`, or `EFAULT`.
    fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let len = buf.len();
        if len == 0 {
            return Ok(());
        }
        if addr == 0 {
            return Err(Errno::EFAULT);
        }
        let n = process_vm_readv(
            self.pid,
            &mut [IoSliceMut::new(buf)],
            &[RemoteIoVec {
                base: addr as usize,
                len,
            }],
        )
        .map_err(|e| if e == Errno::ESRCH { e } else { Errno::EFAULT })?;
        if n != len {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, Errno> {
        let mut b = [0u8; 8];
        self.read_into(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
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
            // Never across a page end. Most strings are short: the first step
            // is small (not a page-sized buffer per path); later ones go to
            // the page end (an argv may be a MiB: few reads).
            let to_page_end = PAGE - (at as usize % PAGE);
            let mut want = to_page_end.min(max + 1 - out.len());
            if out.is_empty() {
                want = want.min(CSTR_FIRST_STEP);
            }
            let start = out.len();
            out.resize(start + want, 0);
            self.read_into(at, &mut out[start..])?;
            if let Some(nul) = out[start..].iter().position(|&b| b == 0) {
                out.truncate(start + nul);
                return Ok(out);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> ToolMemory {
        ToolMemory::new(std::process::id() as i32)
    }

    #[test]
    fn strings_are_read_whole_across_steps_and_pages() {
        // Strings of every awkward length, each placed across a page end.
        for len in [
            0,
            1,
            CSTR_FIRST_STEP - 1,
            CSTR_FIRST_STEP,
            CSTR_FIRST_STEP + 1,
            3000,
            4095,
        ] {
            let mut b = vec![b'x'; 4 * PAGE];
            let base = b.as_ptr() as usize;
            let boundary = (base / PAGE + 2) * PAGE - base;
            let start = boundary - len / 2;
            b[start + len] = 0;
            let addr = (base + start) as u64;
            assert_eq!(
                own().read_cstr(addr, 4095).unwrap(),
                vec![b'x'; len],
                "len {len}"
            );
        }
    }

    #[test]
    fn a_string_longer_than_the_bound_is_refused_and_null_is_efault() {
        let mut s = vec![b'a'; 5000];
        s.push(0);
        let addr = s.as_ptr() as u64;
        assert_eq!(own().read_cstr(addr, 4095), Err(Errno::ENAMETOOLONG));
        assert_eq!(own().read_cstr(addr, 5000).unwrap().len(), 5000);
        assert_eq!(own().read_cstr(0, 4095), Err(Errno::EFAULT));
        // The lowest page is never mapped.
        assert_eq!(own().read_cstr(16, 4095), Err(Errno::EFAULT));
        assert_eq!(own().read_u64(16), Err(Errno::EFAULT));
    }

    #[test]
    fn a_string_that_ends_where_its_mapping_ends_is_read() {
        // A read across the page end would fail (the next page is not
        // readable): every length up to a page, ending on its last byte.
        let mut page = crate::sys::GuardedPage::new().unwrap();
        let size = page.len();
        for len in [
            0,
            1,
            100,
            CSTR_FIRST_STEP - 1,
            CSTR_FIRST_STEP,
            CSTR_FIRST_STEP + 1,
            size - 1,
        ] {
            let bytes = page.bytes_mut();
            bytes.fill(b'y');
            bytes[size - 1] = 0;
            let addr = bytes.as_ptr() as u64 + (size - 1 - len) as u64;
            assert_eq!(
                own().read_cstr(addr, 4095).unwrap(),
                vec![b'y'; len],
                "len {len}"
            );
        }
        // Without its NUL, the string runs into the unreadable page: EFAULT.
        let bytes = page.bytes_mut();
        bytes.fill(b'y');
        let addr = bytes.as_ptr() as u64 + (size - 10) as u64;
        assert_eq!(own().read_cstr(addr, 4095), Err(Errno::EFAULT));
    }
}
