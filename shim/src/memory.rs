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
/// The first step for an argv string once whole-page reads are spent (see
/// `read_argv`).
const ARGV_LONE_FIRST_STEP: usize = 64;

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
        #[cfg(test)]
        tests::COPIED.with(|c| c.set(c.get() + len));
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
        self.read_cstr_from(addr, max, CSTR_FIRST_STEP)
    }

    /// [`ToolMemory::read_cstr`] with a first step of at most `first_step`.
    fn read_cstr_from(&self, addr: u64, max: usize, first_step: usize) -> Result<Vec<u8>, Errno> {
        if addr == 0 {
            return Err(Errno::EFAULT);
        }
        let mut out = Vec::new();
        let mut at = addr;
        let mut step = first_step;
        loop {
            // Never across a page end. Most strings are short: the first step
            // is small (not a page-sized buffer per path); each later one
            // doubles, up to the page end (an argv string may be a MiB: few
            // reads), so what is copied stays within twice the string and
            // the first step.
            let to_page_end = PAGE - (at as usize % PAGE);
            let want = to_page_end.min(max + 1 - out.len()).min(step);
            step = step.saturating_mul(2);
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

    /// A NULL-terminated array of string pointers (an `execve` argv): at
    /// most `max_count` strings of `max_bytes` in all (with their NULs), else
    /// `E2BIG`. The pointers are read a page's worth at a time, never across
    /// a page end (the array may end just before an unreadable page); so are
    /// the strings, which usually lie side by side: most come out of the
    /// page read for an earlier one.
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
        let mut at = addr;
        let mut block = Vec::new();
        let mut strings = StringBlock::default();
        // Whole pages are read for strings only until they have copied twice
        // the byte bound: pointers to strings on pages of their own would
        // otherwise copy a page each (a GiB for 2^18 pointers to the zero
        // page, in the supervisor, outside the tool's cgroup). Past that,
        // each string not already held is read on its own, small step first.
        let mut page_budget = max_bytes.saturating_mul(2);
        loop {
            // A pointer that straddles the page end is read whole.
            let in_page = ((PAGE - at as usize % PAGE) / 8).max(1);
            block.resize(in_page * 8, 0);
            self.read_into(at, &mut block)?;
            for ptr in block.chunks_exact(8) {
                let ptr = u64::from_ne_bytes(ptr.try_into().expect("8 bytes"));
                if ptr == 0 {
                    return Ok(argv);
                }
                if argv.len() >= max_count {
                    return Err(Errno::E2BIG);
                }
                // Room for this string's bytes, its NUL counted.
                let room = max_bytes.checked_sub(total + 1).ok_or(Errno::E2BIG)?;
                let arg = match strings.take(ptr, room) {
                    Held::Whole(found) => found?,
                    Held::Unended => self.read_cstr(ptr, room).map_err(too_big)?,
                    Held::No if page_budget < PAGE => self
                        .read_cstr_from(ptr, room, ARGV_LONE_FIRST_STEP)
                        .map_err(too_big)?,
                    Held::No => {
                        page_budget -= PAGE;
                        // The string's page, in one read (readable whole if
                        // the string is: mappings are whole pages).
                        strings.start = ptr - ptr % PAGE as u64;
                        strings.bytes.resize(PAGE, 0);
                        if let Err(e) = self.read_into(strings.start, &mut strings.bytes) {
                            strings.bytes.clear();
                            return Err(e);
                        }
                        match strings.take(ptr, room) {
                            Held::Whole(found) => found?,
                            // Runs past the page end: read it whole.
                            Held::Unended | Held::No => {
                                self.read_cstr(ptr, room).map_err(too_big)?
                            }
                        }
                    }
                };
                total += arg.len() + 1;
                argv.push(arg);
            }
            at = at.wrapping_add(block.len() as u64);
        }
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

/// The last block of the tool's memory read for an argv string.
#[derive(Default)]
struct StringBlock {
    start: u64,
    bytes: Vec<u8>,
}

/// What a [`StringBlock`] holds of the string at an address.
enum Held {
    /// The whole string (`E2BIG` when longer than the room left).
    Whole(Result<Vec<u8>, Errno>),
    /// Its start, but no NUL before the block ends.
    Unended,
    No,
}

impl StringBlock {
    fn take(&self, ptr: u64, room: usize) -> Held {
        let rest = ptr
            .checked_sub(self.start)
            .and_then(|offset| usize::try_from(offset).ok())
            .and_then(|offset| self.bytes.get(offset..))
            .filter(|rest| !rest.is_empty());
        let Some(rest) = rest else {
            return Held::No;
        };
        match rest.iter().position(|&b| b == 0) {
            Some(len) if len > room => Held::Whole(Err(Errno::E2BIG)),
            Some(len) => Held::Whole(Ok(rest[..len].to_vec())),
            None => Held::Unended,
        }
    }
}

/// A string past its bound is, for an argv, one the kernel would not take.
fn too_big(e: Errno) -> Errno {
    if e == Errno::ENAMETOOLONG {
        Errno::E2BIG
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Bytes this thread asked `read_into` for.
        pub(super) static COPIED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

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

    /// `argv`'s strings, NUL-ended, and a NULL-ended pointer array to them
    /// placed `at` bytes into `area`. Returns the array's address.
    fn lay_out_argv(area: &mut [u8], at: usize, argv: &[&[u8]], strings: &mut Vec<Vec<u8>>) -> u64 {
        for a in argv {
            strings.push([*a, b"\0"].concat());
        }
        let ptrs: Vec<u64> = strings
            .iter()
            .map(|s| s.as_ptr() as u64)
            .chain([0])
            .collect();
        for (i, p) in ptrs.iter().enumerate() {
            area[at + 8 * i..at + 8 * i + 8].copy_from_slice(&p.to_ne_bytes());
        }
        area.as_ptr() as u64 + at as u64
    }

    #[test]
    fn argv_arrays_are_read_across_pages_up_to_their_bounds() {
        let args: Vec<Vec<u8>> = (0..3000).map(|i| format!("arg-{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let mut area = vec![0u8; 8 * (args.len() + 1) + 2 * PAGE];
        let base = area.as_ptr() as usize;
        // Odd placements: page-aligned, just before a page end, unaligned.
        for at in [PAGE - base % PAGE, PAGE - base % PAGE + PAGE - 8, 3] {
            let mut strings = Vec::new();
            let addr = lay_out_argv(&mut area, at, &refs, &mut strings);
            assert_eq!(
                own().read_argv(addr, 3000, 1 << 20).unwrap(),
                args,
                "at {at}"
            );
            // Exactly the bound is allowed; one more string is E2BIG.
            assert_eq!(own().read_argv(addr, 2999, 1 << 20), Err(Errno::E2BIG));
            let bytes: usize = args.iter().map(|a| a.len() + 1).sum();
            assert_eq!(own().read_argv(addr, 3000, bytes).unwrap().len(), 3000);
            assert_eq!(own().read_argv(addr, 3000, bytes - 1), Err(Errno::E2BIG));
        }
        // At the byte bound, even an empty string (its NUL) is one too many.
        let at = PAGE - base % PAGE;
        let mut strings = Vec::new();
        let addr = lay_out_argv(&mut area, at, &[b"abc", b"", b""], &mut strings);
        assert_eq!(own().read_argv(addr, 10, 6).unwrap().len(), 3);
        assert_eq!(own().read_argv(addr, 10, 5), Err(Errno::E2BIG));
        assert_eq!(own().read_argv(addr, 10, 4), Err(Errno::E2BIG));
        assert_eq!(own().read_argv(0, 10, 10).unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(own().read_argv(16, 10, 10), Err(Errno::EFAULT));
    }

    #[test]
    fn argv_strings_side_by_side_are_read_whole_across_page_ends() {
        // Packed in one buffer as xargs builds them: a few pages, so some
        // strings straddle a page end.
        let args: Vec<Vec<u8>> = (0..3000).map(|i| format!("s{i}").into_bytes()).collect();
        let packed: Vec<u8> = args
            .iter()
            .flat_map(|a| a.iter().copied().chain([0]))
            .collect();
        let mut ptrs = Vec::new();
        let mut offset = 0;
        for a in &args {
            ptrs.push(packed.as_ptr() as u64 + offset as u64);
            offset += a.len() + 1;
        }
        ptrs.push(0);
        let addr = ptrs.as_ptr() as u64;
        assert_eq!(own().read_argv(addr, 3000, 1 << 20).unwrap(), args);
        assert_eq!(own().read_argv(addr, 3000, packed.len()).unwrap(), args);
        assert_eq!(
            own().read_argv(addr, 3000, packed.len() - 1),
            Err(Errno::E2BIG)
        );
        // Backwards too: each page read serves the strings before as well.
        let mut reversed: Vec<u64> = ptrs[..args.len()].iter().rev().copied().collect();
        reversed.push(0);
        let mut want = args.clone();
        want.reverse();
        let got = own().read_argv(reversed.as_ptr() as u64, 3000, 1 << 20);
        assert_eq!(got.unwrap(), want);
        // A string that is not NUL-ended in its block's page is read whole.
        let long = vec![b'z'; 3 * PAGE];
        let mut with_long = long.clone();
        with_long.push(0);
        let ptrs = [with_long.as_ptr() as u64, packed.as_ptr() as u64, 0];
        let got = own().read_argv(ptrs.as_ptr() as u64, 10, 1 << 20).unwrap();
        assert_eq!(got, vec![long, args[0].clone()]);
    }

    #[test]
    fn an_argv_array_that_ends_where_its_mapping_ends_is_read() {
        let mut page = crate::sys::GuardedPage::new().unwrap();
        let size = page.len();
        for n in [0, 1, 5] {
            let args: Vec<Vec<u8>> = (0..n).map(|i| vec![b'a' + i as u8; 3]).collect();
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut strings = Vec::new();
            // The NULL is the page's last 8 bytes.
            let addr = lay_out_argv(page.bytes_mut(), size - 8 * (n + 1), &refs, &mut strings);
            assert_eq!(own().read_argv(addr, 10, 100).unwrap(), args, "{n} strings");
        }
        // Without its NULL, the array runs into the unreadable page: EFAULT.
        let bytes = page.bytes_mut();
        let s = b"x\0";
        bytes[size - 8..].copy_from_slice(&(s.as_ptr() as u64).to_ne_bytes());
        let addr = bytes.as_ptr() as u64 + (size - 8) as u64;
        assert_eq!(own().read_argv(addr, 10, 100), Err(Errno::EFAULT));
    }

    #[test]
    fn argv_strings_each_on_a_page_of_their_own_copy_a_bounded_amount() {
        // A string at the start of each of 64 pages: a tool can point 2^18
        // pointers at pages of their own.
        let n = 64;
        let mut area = vec![0u8; (n + 1) * PAGE];
        let base = area.as_ptr() as usize;
        let first = PAGE - base % PAGE;
        // Some longer than the small first step.
        let args: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("a{i}{}", "x".repeat(3 * i)).into_bytes())
            .collect();
        let mut ptrs = Vec::new();
        for (i, a) in args.iter().enumerate() {
            let at = first + i * PAGE;
            area[at..at + a.len()].copy_from_slice(a);
            ptrs.push((base + at) as u64);
        }
        ptrs.push(0);
        let array: Vec<u8> = ptrs.iter().flat_map(|p| p.to_ne_bytes()).collect();
        let max_bytes = 4 * PAGE;
        COPIED.with(|c| c.set(0));
        assert_eq!(
            own()
                .read_argv(array.as_ptr() as u64, n, max_bytes)
                .unwrap(),
            args
        );
        // Whole pages up to twice the byte bound, then per string its first
        // step and twice its bytes at most, and the pointer array (two page
        // reads at most): not a page per string (256 KiB here).
        let copied = COPIED.with(|c| c.get());
        let per_string: usize = args
            .iter()
            .map(|a| ARGV_LONE_FIRST_STEP + 2 * (a.len() + 1))
            .sum();
        let bound = 2 * max_bytes + per_string + 2 * PAGE;
        assert!(copied <= bound, "{copied} bytes copied, bound {bound}");
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
