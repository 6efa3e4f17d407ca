//! Errno names a policy may give for a denial, and their numbers on Linux.
//! Only errnos that make sense as an answer to an open, connect, send or exec
//! are accepted; anything else falls back to EACCES with a note in the reason.

/// The errno used when a policy does not name one.
pub const DEFAULT: &str = "EACCES";

const TABLE: &[(&str, i32)] = &[
    ("EPERM", 1),
    ("ENOENT", 2),
    ("EIO", 5),
    ("E2BIG", 7),
    ("ENOEXEC", 8),
    ("EAGAIN", 11),
    ("ENOMEM", 12),
    ("EACCES", 13),
    ("EFAULT", 14),
    ("EBUSY", 16),
    ("EEXIST", 17),
    ("ENOTDIR", 20),
    ("EISDIR", 21),
    ("EINVAL", 22),
    ("ENFILE", 23),
    ("EMFILE", 24),
    ("ETXTBSY", 26),
    ("EFBIG", 27),
    ("ENOSPC", 28),
    ("EROFS", 30),
    ("EMLINK", 31),
    ("ENAMETOOLONG", 36),
    ("ENOSYS", 38),
    ("ELOOP", 40),
    ("EPROTONOSUPPORT", 93),
    ("EOPNOTSUPP", 95),
    ("EAFNOSUPPORT", 97),
    ("EADDRINUSE", 98),
    ("EADDRNOTAVAIL", 99),
    ("ENETDOWN", 100),
    ("ENETUNREACH", 101),
    ("ECONNABORTED", 103),
    ("ECONNRESET", 104),
    ("ETIMEDOUT", 110),
    ("ECONNREFUSED", 111),
    ("EHOSTDOWN", 112),
    ("EHOSTUNREACH", 113),
    ("EDQUOT", 122),
];

/// The number of an errno name, if it is one a policy may use.
pub fn code(name: &str) -> Option<i32> {
    TABLE.iter().find(|(n, _)| *n == name).map(|&(_, c)| c)
}

/// The name of an errno number, if known.
pub fn name(code: i32) -> Option<&'static str> {
    TABLE.iter().find(|&&(_, c)| c == code).map(|&(n, _)| n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        assert_eq!(super::code("EACCES"), Some(13));
        assert_eq!(super::code("ECONNREFUSED"), Some(111));
        assert_eq!(super::name(1), Some("EPERM"));
        assert_eq!(super::code("EWHATEVER"), None);
    }
}
