//! Cordon shim: not yet implemented (see the shim issue).
