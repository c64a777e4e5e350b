//! The process exit codes of `polld`, shared by every command.

use std::process::ExitCode;

/// Success.
pub const OK: u8 = 0;
/// Any other failure (and, for `polld await`, a `--fail-if` that matched or
/// a permanent HTTP error).
pub const FAILURE: u8 = 1;
/// `polld await`: the timeout ran out or the attempts were exhausted.
pub const TIMEOUT: u8 = 2;
/// EX_CONFIG from sysexits.h: an invalid watch list or bad arguments.
/// systemd's unit lists it in `RestartPreventExitStatus=`.
pub const CONFIG: u8 = 78;

/// EX_DATAERR: the database is corrupted or truncated; it was left untouched
/// for the operator (a restart would not help).
pub const STORE_CORRUPTED: u8 = 65;
/// EX_IOERR: the database could not be read or written.
pub const STORE_IO: u8 = 74;
/// EX_TEMPFAIL: another polld holds the database.
pub const STORE_LOCKED: u8 = 75;

/// An [`ExitCode`] from one of the constants above.
pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}
