//! The byte layout of every record the store keeps as a redb value.
//!
//! Owns encoding and decoding of watch states, versions, change-log entries
//! and body blobs. The layout is hand-rolled rather than serde-derived
//! because the state record is written on every poll (the 304 path is the
//! hot path) and must stay small for 100,000 watches: integers are LEB128
//! varints, strings are length-prefixed, options carry a one-byte tag. Every
//! record starts with a format byte so that a later schema can tell old
//! records from new ones without a full rewrite.

use crate::Hash;
use crate::error::DecodeError;
use crate::model::{Change, ChangeKind, Version, WatchState, WatchStatus};

/// Format byte of every record (and of watch states without a server hold).
const RECORD_V1: u8 = 1;
/// Format byte of a watch state with a server hold (schema 5): its trailing
/// fields are all present, each an option, instead of V1's "absent at the
/// end".
const RECORD_V2: u8 = 2;
/// Format byte of a watch state with a cursor page's hash (schema 7): the
/// V2 layout, then the hash.
const RECORD_V3: u8 = 3;

/// Body blob tags: bodies that zstd does not shrink are kept as they are, so
/// that tiny or already-compressed bodies cost no CPU to read back.
pub(crate) const BODY_RAW: u8 = 0;
pub(crate) const BODY_ZSTD: u8 = 1;

/// Appends primitives to a byte buffer.
pub(crate) struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Enc {
            buf: Vec::with_capacity(n),
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn fixed64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }

    fn opt_varint(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.varint(v);
            }
        }
    }

    fn hash(&mut self, h: &Hash) {
        self.buf.extend_from_slice(h);
    }
}

/// Reads primitives from a byte slice; every read is bounds-checked so a
/// damaged record becomes a [`DecodeError`], never a panic.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Dec { buf, what }
    }

    fn err(&self, why: &'static str) -> DecodeError {
        DecodeError {
            record: self.what,
            why,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        // At most 10 bytes encode a u64; the bound also ends the loop on garbage.
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    fn varint32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| self.err("u32 out of range"))
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("took 8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| self.err("length out of range"))?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("invalid UTF-8"))
    }

    fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(self.err("bad option tag")),
        }
    }

    /// Passes over an optional string (its text is not checked).
    fn skip_opt_str(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            0 => Ok(()),
            1 => self.bytes().map(drop),
            _ => Err(self.err("bad option tag")),
        }
    }

    fn opt_varint(&mut self) -> Result<Option<u64>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.varint().map(Some),
            _ => Err(self.err("bad option tag")),
        }
    }

    fn hash(&mut self) -> Result<Hash, DecodeError> {
        Ok(self.take(32)?.try_into().expect("took 32 bytes"))
    }

    fn opt_hash(&mut self) -> Result<Option<Hash>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.hash().map(Some),
            _ => Err(self.err("bad option tag")),
        }
    }

    fn format(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            RECORD_V1 => Ok(()),
            _ => Err(self.err("unknown record format")),
        }
    }

    /// The format byte of a watch state: V1 or V2.
    fn state_format(&mut self) -> Result<u8, DecodeError> {
        match self.u8()? {
            f @ (RECORD_V1 | RECORD_V2 | RECORD_V3) => Ok(f),
            _ => Err(self.err("unknown record format")),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

fn status_code(s: WatchStatus) -> u8 {
    match s {
        WatchStatus::Ok => 0,
        WatchStatus::Error => 1,
        WatchStatus::RateLimited => 2,
        WatchStatus::Done => 3,
        WatchStatus::Removed => 4,
    }
}

fn status_from(code: u8) -> Option<WatchStatus> {
    Some(match code {
        0 => WatchStatus::Ok,
        1 => WatchStatus::Error,
        2 => WatchStatus::RateLimited,
        3 => WatchStatus::Done,
        4 => WatchStatus::Removed,
        _ => return None,
    })
}

fn kind_code(k: ChangeKind) -> u8 {
    match k {
        ChangeKind::NewVersion => 0,
        ChangeKind::WatchAdded => 1,
        ChangeKind::WatchRemoved => 2,
        ChangeKind::ErrorStarted => 3,
        ChangeKind::ErrorCleared => 4,
        ChangeKind::Done => 5,
        ChangeKind::RateLimited => 6,
        ChangeKind::RateLimitCleared => 7,
    }
}

fn kind_from(code: u8) -> Option<ChangeKind> {
    Some(match code {
        0 => ChangeKind::NewVersion,
        1 => ChangeKind::WatchAdded,
        2 => ChangeKind::WatchRemoved,
        3 => ChangeKind::ErrorStarted,
        4 => ChangeKind::ErrorCleared,
        5 => ChangeKind::Done,
        6 => ChangeKind::RateLimited,
        7 => ChangeKind::RateLimitCleared,
        _ => return None,
    })
}

/// Bytes a state record is likely to take, so that one allocation holds it.
fn state_size_hint(s: &WatchState) -> usize {
    64 + s.url.len()
        + s.etag.as_ref().map_or(0, String::len)
        + s.last_modified.as_ref().map_or(0, String::len)
        + s.cursor.as_ref().map_or(0, String::len)
        + s.last_error.as_ref().map_or(0, String::len)
        + s.cursor_page_hash.as_ref().map_or(0, |_| 32)
}

/// A state record alone, as a row of `watches` holds it (the id is the key
/// and is not repeated). Commits write it inside a state-log entry
/// ([`push_logged_state`]); a fold copies it.
#[cfg(test)]
pub(crate) fn encode_state(s: &WatchState) -> Vec<u8> {
    let mut e = Enc::with_capacity(state_size_hint(s));
    encode_state_into(&mut e, s, VersionFields::of(s));
    e.finish()
}

/// The fields of a state that the store, not the engine, owns: a commit
/// writes its own values of them over the engine's copy (without cloning
/// the whole state to do so).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct VersionFields {
    pub(crate) versions: u64,
    pub(crate) latest_version: Option<u64>,
    pub(crate) latest_hash: Option<Hash>,
}

impl VersionFields {
    #[cfg(test)]
    pub(crate) fn of(s: &WatchState) -> VersionFields {
        VersionFields {
            versions: s.versions,
            latest_version: s.latest_version,
            latest_hash: s.latest_hash,
        }
    }
}

/// Appends one watch state to a state-log chunk: the entry's length, the
/// watch id, then the state record exactly as [`encode_state`] makes it,
/// so that a fold copies the record into `watches` without decoding it.
/// Returns the entry's offset in the chunk.
/// `versions` replaces the state's own [`VersionFields`].
pub(crate) fn push_logged_state(
    chunk: &mut Vec<u8>,
    s: &WatchState,
    versions: VersionFields,
) -> usize {
    let offset = chunk.len();
    let mut e = Enc::with_capacity(2 + s.id.len() + state_size_hint(s));
    e.str(&s.id);
    encode_state_into(&mut e, s, versions);
    // The length straight into the chunk: no second buffer per poll.
    let mut out = Enc {
        buf: std::mem::take(chunk),
    };
    out.varint(e.buf.len() as u64);
    out.buf.extend_from_slice(&e.buf);
    *chunk = out.buf;
    offset
}

/// The state-log entry at `offset` of a chunk: the watch id, its state
/// record, and the offset of the next entry.
pub(crate) fn logged_state_at(
    chunk: &[u8],
    offset: usize,
) -> Result<(&str, &[u8], usize), DecodeError> {
    let mut d = Dec::new(chunk, "state log entry");
    d.take(offset)?;
    let entry = d.bytes()?;
    let next = chunk.len() - d.buf.len();
    let mut e = Dec::new(entry, "state log entry");
    let id = std::str::from_utf8(e.bytes()?).map_err(|_| e.err("invalid UTF-8"))?;
    Ok((id, e.buf, next))
}

fn encode_state_into(e: &mut Enc, s: &WatchState, v: VersionFields) {
    // Most records have no hold and keep the V1 layout byte for byte.
    let v3 = s.cursor_page_hash.is_some();
    let v2 = v3 || s.hold_until_ms.is_some();
    e.u8(if v3 {
        RECORD_V3
    } else if v2 {
        RECORD_V2
    } else {
        RECORD_V1
    });
    e.str(&s.url);
    // A hash is uniformly spread, so a varint would only make it longer.
    e.fixed64(s.fingerprint);
    e.opt_str(s.etag.as_deref());
    e.opt_str(s.last_modified.as_deref());
    e.opt_str(s.cursor.as_deref());
    e.opt_varint(s.next_due_ms);
    e.varint(s.interval_ms);
    e.varint(u64::from(s.backoff_level));
    e.varint(u64::from(s.consecutive_errors));
    e.varint(u64::from(s.consecutive_moves));
    e.opt_varint(s.last_status.map(u64::from));
    e.opt_str(s.last_error.as_deref());
    e.u8(status_code(s.status));
    e.opt_varint(s.last_checked_ms);
    e.opt_varint(s.last_changed_ms);
    for c in [
        s.polls,
        s.not_modified,
        s.unchanged,
        s.changed,
        s.errors,
        s.rate_limited,
        s.bytes_received,
        v.versions,
    ] {
        e.varint(c);
    }
    e.opt_varint(v.latest_version);
    match &v.latest_hash {
        None => e.u8(0),
        Some(h) => {
            e.u8(1);
            e.hash(h);
        }
    }
    if v2 {
        e.opt_str(s.pending_job.as_deref());
        e.opt_varint(s.base_interval_ms);
        e.opt_varint(s.hold_until_ms);
        if let Some(page) = &s.cursor_page_hash {
            e.hash(page);
        }
        return;
    }
    // Schema 3 and 4: appended, so that older records (without them) still
    // decode; an older polld refuses a newer file before reading one. Left
    // out when absent, which keeps a schema 3 record's encoding.
    if s.pending_job.is_some() || s.base_interval_ms.is_some() {
        match &s.pending_job {
            None => e.u8(0),
            Some(job) => {
                e.u8(1);
                e.str(job);
            }
        }
    }
    if let Some(base) = s.base_interval_ms {
        e.varint(base);
    }
}

/// The [`VersionFields`] of a state record, read without building the
/// state (a commit needs only these of the previous state). The rest of
/// the record is not checked here: [`decode_state`] reads it whole.
pub(crate) fn decode_version_fields(b: &[u8]) -> Result<VersionFields, DecodeError> {
    let mut d = Dec::new(b, "watch state");
    d.state_format()?;
    d.bytes()?; // url
    d.fixed64()?; // fingerprint
    for _ in 0..3 {
        d.skip_opt_str()?; // etag, last_modified, cursor
    }
    d.opt_varint()?; // next_due_ms
    for _ in 0..4 {
        d.varint()?; // interval, backoff level, errors, moves in a row
    }
    d.opt_varint()?; // last_status
    d.skip_opt_str()?; // last_error
    d.u8()?; // status
    d.opt_varint()?; // last_checked_ms
    d.opt_varint()?; // last_changed_ms
    for _ in 0..7 {
        d.varint()?; // the counters before `versions`
    }
    let versions = d.varint()?;
    let latest_version = d.opt_varint()?;
    let latest_hash = d.opt_hash()?;
    Ok(VersionFields {
        versions,
        latest_version,
        latest_hash,
    })
}

pub(crate) fn decode_state(id: &str, b: &[u8]) -> Result<WatchState, DecodeError> {
    let mut d = Dec::new(b, "watch state");
    let format = d.state_format()?;
    let url = d.string()?;
    let fingerprint = d.fixed64()?;
    let etag = d.opt_string()?;
    let last_modified = d.opt_string()?;
    let cursor = d.opt_string()?;
    let next_due_ms = d.opt_varint()?;
    let interval_ms = d.varint()?;
    let backoff_level = d.varint32()?;
    let consecutive_errors = d.varint32()?;
    let consecutive_moves = d.varint32()?;
    let last_status = match d.opt_varint()? {
        None => None,
        Some(v) => Some(u16::try_from(v).map_err(|_| d.err("status out of range"))?),
    };
    let last_error = d.opt_string()?;
    let status = status_from(d.u8()?).ok_or_else(|| d.err("unknown status"))?;
    let last_checked_ms = d.opt_varint()?;
    let last_changed_ms = d.opt_varint()?;
    let polls = d.varint()?;
    let not_modified = d.varint()?;
    let unchanged = d.varint()?;
    let changed = d.varint()?;
    let errors = d.varint()?;
    let rate_limited = d.varint()?;
    let bytes_received = d.varint()?;
    let versions = d.varint()?;
    let latest_version = d.opt_varint()?;
    let latest_hash = d.opt_hash()?;
    let (pending_job, base_interval_ms, hold_until_ms) = if format == RECORD_V1 {
        let (pending_job, base_interval_ms) = decode_v1_trailer(&mut d)?;
        (pending_job, base_interval_ms, None)
    } else {
        (d.opt_string()?, d.opt_varint()?, d.opt_varint()?)
    };
    let cursor_page_hash = if format == RECORD_V3 {
        Some(Box::new(d.hash()?))
    } else {
        None
    };
    d.end()?;
    Ok(WatchState {
        id: id.to_owned(),
        url,
        fingerprint,
        etag,
        last_modified,
        cursor,
        next_due_ms,
        interval_ms,
        backoff_level,
        consecutive_errors,
        consecutive_moves,
        last_status,
        last_error,
        status,
        last_checked_ms,
        last_changed_ms,
        polls,
        not_modified,
        unchanged,
        changed,
        errors,
        rate_limited,
        bytes_received,
        versions,
        latest_version,
        latest_hash,
        pending_job,
        base_interval_ms,
        hold_until_ms,
        cursor_page_hash,
    })
}

/// A V1 state's optional tail: the pending job and the configured interval,
/// each absent when the record ends before it (see `encode_state`).
fn decode_v1_trailer(d: &mut Dec<'_>) -> Result<(Option<String>, Option<u64>), DecodeError> {
    let pending_job = if d.buf.is_empty() {
        None
    } else {
        match d.u8()? {
            0 => None,
            1 => Some(d.string()?),
            _ => return Err(d.err("bad pending-job tag")),
        }
    };
    let base_interval_ms = if d.buf.is_empty() {
        None
    } else {
        Some(d.varint()?)
    };
    Ok((pending_job, base_interval_ms))
}

/// The version record. Watch id and number are the key.
pub(crate) fn encode_version(v: &Version) -> Vec<u8> {
    let mut e = Enc::with_capacity(
        64 + v
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>(),
    );
    e.u8(RECORD_V1);
    e.varint(v.fetched_at_ms);
    e.hash(&v.hash);
    e.varint(v.size);
    e.opt_str(v.content_type.as_deref());
    e.varint(v.headers.len() as u64);
    for (k, val) in &v.headers {
        e.str(k);
        e.str(val);
    }
    e.finish()
}

pub(crate) fn decode_version(number: u64, b: &[u8]) -> Result<Version, DecodeError> {
    let mut d = Dec::new(b, "version");
    d.format()?;
    let fetched_at_ms = d.varint()?;
    let hash = d.hash()?;
    let size = d.varint()?;
    let content_type = d.opt_string()?;
    let n = d.varint()?;
    // Each header takes at least two bytes, which bounds the count by the
    // record length and keeps a damaged count from reserving gigabytes.
    if n > (d.buf.len() / 2) as u64 {
        return Err(d.err("header count exceeds record"));
    }
    let mut headers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = d.string()?;
        let v = d.string()?;
        headers.push((k, v));
    }
    d.end()?;
    Ok(Version {
        number,
        fetched_at_ms,
        hash,
        size,
        content_type,
        headers,
    })
}

/// A change-log entry. The seq is the key.
pub(crate) fn encode_change(
    watch: &str,
    version: Option<u64>,
    kind: ChangeKind,
    at_ms: u64,
) -> Vec<u8> {
    let mut e = Enc::with_capacity(16 + watch.len());
    e.u8(RECORD_V1);
    e.str(watch);
    e.opt_varint(version);
    e.u8(kind_code(kind));
    e.varint(at_ms);
    e.finish()
}

pub(crate) fn decode_change(seq: u64, b: &[u8]) -> Result<Change, DecodeError> {
    let mut d = Dec::new(b, "change");
    d.format()?;
    let watch = d.string()?;
    let version = d.opt_varint()?;
    let kind = kind_from(d.u8()?).ok_or_else(|| d.err("unknown change kind"))?;
    let at_ms = d.varint()?;
    d.end()?;
    Ok(Change {
        seq,
        watch,
        version,
        kind,
        at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_state() -> WatchState {
        WatchState {
            id: "w".into(),
            url: "https://example.org/a?b=c".into(),
            fingerprint: u64::MAX - 7,
            etag: Some("\"abc\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            cursor: Some("cur".into()),
            next_due_ms: Some(1_700_000_000_123),
            interval_ms: 300_000,
            backoff_level: 3,
            consecutive_errors: 2,
            consecutive_moves: 1,
            last_status: Some(304),
            last_error: Some("timeout".into()),
            status: WatchStatus::RateLimited,
            last_checked_ms: Some(5),
            last_changed_ms: Some(4),
            polls: 10,
            not_modified: 6,
            unchanged: 1,
            changed: 1,
            errors: 1,
            rate_limited: 1,
            bytes_received: 1 << 40,
            versions: 1,
            latest_version: Some(1),
            latest_hash: Some([9; 32]),
            pending_job: None,
            base_interval_ms: Some(60_000),
            hold_until_ms: None,
            cursor_page_hash: None,
        }
    }

    #[test]
    fn version_fields_are_read_from_every_record_form() {
        let v1 = full_state();
        let v2 = WatchState {
            hold_until_ms: Some(1_700_000_123_456),
            ..full_state()
        };
        let v3 = WatchState {
            cursor_page_hash: Some(Box::new([5; 32])),
            ..full_state()
        };
        let bare = WatchState {
            latest_hash: None,
            latest_version: None,
            versions: 0,
            pending_job: None,
            base_interval_ms: None,
            ..full_state()
        };
        for s in [v1, v2, v3, bare] {
            let record = encode_state(&s);
            let fields = decode_version_fields(&record).unwrap();
            assert_eq!(
                (fields.versions, fields.latest_version, fields.latest_hash),
                (s.versions, s.latest_version, s.latest_hash)
            );
        }
        // A logged state takes the store's fields, not the engine's.
        let mut chunk = Vec::new();
        let stored = VersionFields {
            versions: 7,
            latest_version: Some(9),
            latest_hash: Some([3; 32]),
        };
        let offset = push_logged_state(&mut chunk, &full_state(), stored);
        let (id, record, _) = logged_state_at(&chunk, offset).unwrap();
        let back = decode_state(id, record).unwrap();
        assert_eq!(
            (back.versions, back.latest_version, back.latest_hash),
            (7, Some(9), Some([3; 32]))
        );
        assert_eq!(back.url, full_state().url);
    }

    #[test]
    fn state_log_entries_are_the_id_then_the_record_byte_for_byte() {
        let states = [
            full_state(),
            WatchState {
                id: "another".into(),
                hold_until_ms: Some(1_700_000_123_456),
                ..full_state()
            },
        ];
        let mut chunk = Vec::new();
        let offsets: Vec<usize> = states
            .iter()
            .map(|s| push_logged_state(&mut chunk, s, VersionFields::of(s)))
            .collect();
        assert_eq!(offsets[0], 0);
        let mut at = 0;
        for (s, offset) in states.iter().zip(offsets) {
            assert_eq!(at, offset, "entries follow each other");
            let (id, record, next) = logged_state_at(&chunk, offset).unwrap();
            assert_eq!(id, s.id);
            // A fold copies these bytes into `watches` without decoding.
            assert_eq!(record, encode_state(s).as_slice());
            assert_eq!(decode_state(id, record).unwrap(), *s);
            at = next;
        }
        assert_eq!(at, chunk.len());
        assert!(
            logged_state_at(&chunk, chunk.len()).is_err(),
            "past the end"
        );
        assert!(
            logged_state_at(&chunk[..chunk.len() - 1], offsets_last(&chunk)).is_err(),
            "cut short"
        );
        assert!(
            logged_state_at(&[3, 2, 0xff, 0xfe], 0).is_err(),
            "id not UTF-8"
        );
    }

    /// The offset of the last entry of a chunk.
    fn offsets_last(chunk: &[u8]) -> usize {
        let mut at = 0;
        loop {
            let (_, _, next) = logged_state_at(chunk, at).unwrap();
            if next == chunk.len() {
                return at;
            }
            at = next;
        }
    }

    #[test]
    fn a_server_hold_round_trips_in_format_2_and_other_states_stay_format_1() {
        let plain = encode_state(&full_state());
        assert_eq!(plain[0], RECORD_V1, "no hold: the V1 layout");
        for (job, base) in [
            (None, None),
            (Some("https://example.org/jobs/17"), None),
            (None, Some(60_000)),
            (Some("https://example.org/jobs/17"), Some(60_000)),
        ] {
            let s = WatchState {
                pending_job: job.map(str::to_owned),
                base_interval_ms: base,
                hold_until_ms: Some(1_700_000_123_456),
                ..full_state()
            };
            // Every field of format 2 is present: any cut is an error.
            assert_round_trips_whole(&s, RECORD_V2);
        }
        // A format this build does not know is refused, not misread.
        let mut unknown = encode_state(&full_state());
        unknown[0] = 4;
        assert!(decode_state("w", &unknown).is_err());
    }

    #[test]
    fn a_cursor_page_hash_round_trips_in_format_3() {
        for hold in [None, Some(1_700_000_123_456)] {
            let s = WatchState {
                hold_until_ms: hold,
                cursor_page_hash: Some(Box::new([7; 32])),
                ..full_state()
            };
            assert_round_trips_whole(&s, RECORD_V3);
        }
    }

    /// `s` encodes in `format` and decodes back to itself; the record
    /// cut anywhere, or with a byte after it, does not decode.
    fn assert_round_trips_whole(s: &WatchState, format: u8) {
        let b = encode_state(s);
        assert_eq!(b[0], format);
        assert_eq!(decode_state("w", &b).unwrap(), *s);
        for cut in 0..b.len() {
            assert!(decode_state("w", &b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode_state("w", &long).is_err(), "garbage after it");
    }

    #[test]
    fn a_pending_job_round_trips_and_older_records_have_none() {
        let mut s = full_state();
        s.pending_job = Some("https://example.org/jobs/17".into());
        let back = decode_state("w", &encode_state(&s)).unwrap();
        assert_eq!(back.pending_job, s.pending_job);
        // A schema 2 record is this encoding without the trailing fields.
        let older = encode_state(&WatchState {
            base_interval_ms: None,
            ..full_state()
        });
        assert_eq!(decode_state("w", &older).unwrap().pending_job, None);
        // A schema 3 record: a job, no base interval.
        let v3 = WatchState {
            base_interval_ms: None,
            ..s.clone()
        };
        assert_eq!(decode_state("w", &encode_state(&v3)).unwrap(), v3);
        let mut trailing = encode_state(&s);
        trailing.push(0xff);
        assert!(decode_state("w", &trailing).is_err(), "garbage after it");
    }

    #[test]
    fn state_round_trips_full_and_default() {
        let s = full_state();
        let back = decode_state("w", &encode_state(&s)).unwrap();
        assert_eq!(format!("{s:?}"), format!("{back:?}"));
        let d = WatchState {
            id: "x".into(),
            ..WatchState::default()
        };
        let back = decode_state("x", &encode_state(&d)).unwrap();
        assert_eq!(format!("{d:?}"), format!("{back:?}"));
    }

    #[test]
    fn state_record_is_small() {
        // 100,000 watches must fit easily: a typical 304-path state stays
        // well under 128 bytes beyond its URL and validators.
        let s = full_state();
        let n = encode_state(&s).len();
        let variable = s.url.len() + 5 + 29 + 3 + 7;
        assert!(n - variable < 110, "state record is {n} bytes");
    }

    #[test]
    fn truncated_or_garbage_records_are_errors_not_panics() {
        let b = encode_state(&full_state());
        // The appended fields are optional: a cut before them is an error, a
        // cut between them reads as an older record, never as another value.
        let older = encode_state(&WatchState {
            base_interval_ms: None,
            ..full_state()
        });
        for cut in 0..b.len() {
            match decode_state("w", &b[..cut]) {
                Err(_) => {}
                Ok(back) => {
                    assert!(cut >= older.len(), "cut at {cut} decoded");
                    assert_eq!(back.base_interval_ms, None, "cut at {cut}");
                }
            }
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode_state("w", &long).is_err());
        let v = encode_version(&Version {
            number: 1,
            fetched_at_ms: 1,
            hash: [1; 32],
            size: 3,
            content_type: None,
            headers: vec![("a".into(), "b".into())],
        });
        for cut in 0..v.len() {
            assert!(decode_version(1, &v[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_change(1, &[RECORD_V1, 0xff, 0xff]).is_err());
        assert!(decode_change(1, &[42]).is_err(), "unknown format byte");
    }

    #[test]
    fn varint_edges_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut e = Enc::with_capacity(10);
            e.varint(v);
            let b = e.finish();
            let mut d = Dec::new(&b, "t");
            assert_eq!(d.varint().unwrap(), v);
            assert!(d.end().is_ok());
        }
    }

    #[test]
    fn change_and_version_round_trip() {
        let c = decode_change(
            7,
            &encode_change("w", Some(3), ChangeKind::ErrorCleared, 99),
        )
        .unwrap();
        assert_eq!(
            (c.seq, c.watch.as_str(), c.version, c.kind, c.at_ms),
            (7, "w", Some(3), ChangeKind::ErrorCleared, 99)
        );
        let v = Version {
            number: 4,
            fetched_at_ms: 12,
            hash: [3; 32],
            size: 1024,
            content_type: Some("text/html".into()),
            headers: vec![
                ("etag".into(), "\"x\"".into()),
                ("x-a".into(), String::new()),
            ],
        };
        let back = decode_version(4, &encode_version(&v)).unwrap();
        assert_eq!(back, v);
    }
}
