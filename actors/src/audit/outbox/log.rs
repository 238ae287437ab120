//! The outbox's files: append-only segments of checksummed records, a checkpoint of the chain
//! heads and the shipped cursor. Nothing else in Custos writes them.
//!
//! In `<dir>`:
//! - `chain` — this outbox's chain id, written once when the outbox is created.
//! - `<first>.seg` — records in position order; `first` (20 digits) is the position of the
//!   segment's first record. Only the newest segment is appended to. A group of records is
//!   written with one `write` and made durable with one `fdatasync` (group commit); a segment
//!   is closed once it holds [`SEGMENT_BYTES`], and removed once every record in it was shipped.
//!   The newest segment grows by [`ZERO_CHUNK`] of zeros ahead of its records, so most groups
//!   land inside the file's length and their `fdatasync` writes no metadata (no size change,
//!   no inode write); the zeros after the last record end the log like the end of the file.
//! - `heads` — the chain head of every stream as of the start of the newest segment, written
//!   (temporary file, fsync, rename) whenever a segment is closed, so removing shipped
//!   segments never loses where a chain stands. Opening reads it, then the heads carried by
//!   the records of the retained segments.
//! - `shipped` — where the shipper stands: everything before it is durable at the sink. Not
//!   fsynced: a stale cursor only ships entries again, under the same event ids. In memory the
//!   shipper also has a `sent` cursor, at or after it: entries a sink has taken but not yet
//!   made durable, which are released once it has (or sent again after a failure).
//!
//! A record is `len` (u32 LE) · `crc32` of the body (u32 LE) · body, and the body is
//! position · time in ms · chain sequence (u64 LE each) · chain hash (32 bytes) · tenant
//! length (u8) · tenant · event JSON. Opening cuts a torn or damaged tail off the newest
//! segment (those records were never acknowledged: their fsync had not returned); damage in
//! an older segment is an error, never silently skipped.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Entry, Head};
use crate::audit::AuditError;

/// A segment is closed once it holds this many bytes.
pub(super) const SEGMENT_BYTES: u64 = 32 << 20;
/// Length and checksum in front of every body.
const HEADER: usize = 8;
/// The body's fixed part: position, time, sequence, hash, tenant length.
const FIXED: usize = 8 + 8 + 8 + 32 + 1;
/// The newest segment is grown by this many zero bytes at a time, ahead of its records.
const ZERO_CHUNK: u64 = 1 << 20;
/// The largest body accepted; an event JSON is a few hundred bytes.
pub(super) const MAX_BODY: usize = 1 << 20;
/// Bytes read at a time by the shipper; always holds at least one whole record.
const READ_CHUNK: usize = MAX_BODY + HEADER;

fn storage(e: impl std::fmt::Display) -> AuditError {
    AuditError::Storage(e.to_string())
}

fn damaged(what: &str, path: &Path) -> AuditError {
    AuditError::Storage(format!("damaged audit outbox {what} {}", path.display()))
}

/// A place in the log: the position of the record there and where its bytes start. Outside
/// the outbox it is only a mark handed back: where a sent batch ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub(super) position: u64,
    /// First position of the segment holding it.
    pub(super) segment: u64,
    pub(super) offset: u64,
}

/// One record, as appended and as read back.
pub(super) struct Record<'a> {
    pub position: u64,
    pub time_ms: u64,
    pub head: Head,
    pub tenant: &'a str,
    pub json: &'a [u8],
}

/// Appends one record to `buf`. Tenant ids are DNS labels (at most 63 bytes).
pub(super) fn encode(buf: &mut Vec<u8>, record: &Record<'_>) -> Result<(), AuditError> {
    let body_len = FIXED + record.tenant.len() + record.json.len();
    if body_len > MAX_BODY || record.tenant.len() > u8::MAX as usize {
        return Err(AuditError::Storage(format!("an audit event of {body_len} bytes is too large to record")));
    }
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&record.position.to_le_bytes());
    buf.extend_from_slice(&record.time_ms.to_le_bytes());
    buf.extend_from_slice(&record.head.seq.to_le_bytes());
    buf.extend_from_slice(&record.head.hash);
    buf.push(record.tenant.len() as u8);
    buf.extend_from_slice(record.tenant.as_bytes());
    buf.extend_from_slice(record.json);
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

enum Decoded<'a> {
    /// A whole, intact record and the bytes it took.
    Record(Record<'a>, usize),
    /// The bytes end inside a record.
    Short,
    Damaged,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn decode(bytes: &[u8]) -> Decoded<'_> {
    if bytes.len() < HEADER {
        return Decoded::Short;
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("four bytes")) as usize;
    if !(FIXED..=MAX_BODY).contains(&len) {
        return Decoded::Damaged;
    }
    let Some(body) = bytes.get(HEADER..HEADER + len) else { return Decoded::Short };
    if crc32fast::hash(body) != u32::from_le_bytes(bytes[4..8].try_into().expect("four bytes")) {
        return Decoded::Damaged;
    }
    let tenant_len = body[FIXED - 1] as usize;
    let Some(tenant) = body.get(FIXED..FIXED + tenant_len).and_then(|t| std::str::from_utf8(t).ok()) else {
        return Decoded::Damaged;
    };
    let record = Record {
        position: u64_at(body, 0),
        time_ms: u64_at(body, 8),
        head: Head { seq: u64_at(body, 16), hash: body[24..56].try_into().expect("32 bytes") },
        tenant,
        json: &body[FIXED + tenant_len..],
    };
    Decoded::Record(record, HEADER + len)
}

struct Segment {
    first: u64,
    path: PathBuf,
    /// Bytes known durable (for the newest segment: up to the last group commit).
    bytes: u64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// What both the committer and the shipper see: durable segments, heads and the cursor.
pub(super) struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    /// The shipper's open segment.
    reader: Mutex<Option<(u64, File)>>,
}

struct State {
    /// Oldest first; the last one is appended to.
    segments: Vec<Segment>,
    /// Every position below it is durable.
    next: u64,
    heads: HashMap<String, Head>,
    shipped: Cursor,
    /// At or after `shipped`: where reading for the sink goes on.
    sent: Cursor,
}

/// What an earlier run left, for placing to continue from.
pub(super) struct Recovered {
    pub chain: String,
    pub next: u64,
    pub heads: HashMap<String, Head>,
    pub shipped: u64,
}

/// The committer's end: the open newest segment.
pub(super) struct Appender {
    shared: Arc<Shared>,
    file: File,
    first: u64,
    /// Where the records end (everything before is durable).
    bytes: u64,
    /// The file's length: `bytes` and the zeros grown ahead of it.
    length: u64,
}

fn write_durably(dir: &Path, name: &str, content: &[u8]) -> Result<(), AuditError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(storage)?;
    file.write_all(content).map_err(storage)?;
    file.sync_all().map_err(storage)?;
    fs::rename(&tmp, dir.join(name)).map_err(storage)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(storage)
}

/// `heads`: until (u64 LE) · count (u32 LE) · per head: tenant length (u8), tenant, seq
/// (u64 LE), hash — then the crc32 of all that.
fn encode_heads(until: u64, heads: &HashMap<String, Head>) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + heads.len() * 80);
    out.extend_from_slice(&until.to_le_bytes());
    out.extend_from_slice(&(heads.len() as u32).to_le_bytes());
    for (tenant, head) in heads {
        out.push(tenant.len() as u8);
        out.extend_from_slice(tenant.as_bytes());
        out.extend_from_slice(&head.seq.to_le_bytes());
        out.extend_from_slice(&head.hash);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_heads(bytes: &[u8]) -> Option<(u64, HashMap<String, Head>)> {
    let (content, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
    if crc32fast::hash(content) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let until = u64::from_le_bytes(content.get(..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(content.get(8..12)?.try_into().ok()?);
    let mut heads = HashMap::with_capacity(count as usize);
    let mut at = 12;
    for _ in 0..count {
        let len = *content.get(at)? as usize;
        let tenant = std::str::from_utf8(content.get(at + 1..at + 1 + len)?).ok()?;
        at += 1 + len;
        let seq = u64::from_le_bytes(content.get(at..at + 8)?.try_into().ok()?);
        let hash: [u8; 32] = content.get(at + 8..at + 40)?.try_into().ok()?;
        at += 40;
        heads.insert(tenant.to_string(), Head { seq, hash });
    }
    (at == content.len()).then_some((until, heads))
}

/// `shipped`: position, segment, offset (u64 LE each), crc32.
fn encode_cursor(cursor: Cursor) -> [u8; 28] {
    let mut out = [0u8; 28];
    out[..8].copy_from_slice(&cursor.position.to_le_bytes());
    out[8..16].copy_from_slice(&cursor.segment.to_le_bytes());
    out[16..24].copy_from_slice(&cursor.offset.to_le_bytes());
    let crc = crc32fast::hash(&out[..24]);
    out[24..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode_cursor(bytes: &[u8]) -> Option<Cursor> {
    if bytes.len() != 28 || crc32fast::hash(&bytes[..24]) != u32::from_le_bytes(bytes[24..].try_into().ok()?) {
        return None;
    }
    Some(Cursor { position: u64_at(bytes, 0), segment: u64_at(bytes, 8), offset: u64_at(bytes, 16) })
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, AuditError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(storage)? {
        let entry = entry.map_err(storage)?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = entry.metadata().map_err(storage)?.len();
        segments.push(Segment { first, path: entry.path(), bytes });
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// Reads one segment whole, checks that its positions follow on from `first`, feeds every
/// record at or after `heads_until` into `heads`, and returns the next position, the length
/// of its intact prefix and whether everything after that prefix is zeros (padding).
fn scan(
    segment: &Segment,
    heads_until: u64,
    heads: &mut HashMap<String, Head>,
) -> Result<(u64, u64, bool), AuditError> {
    let content = fs::read(&segment.path).map_err(storage)?;
    let (mut at, mut next) = (0usize, segment.first);
    while at < content.len() {
        match decode(&content[at..]) {
            Decoded::Record(record, used) if record.position == next => {
                if record.position >= heads_until {
                    heads.insert(record.tenant.to_string(), record.head);
                }
                next += 1;
                at += used;
            }
            _ => break,
        }
    }
    let padding = content[at..].iter().all(|b| *b == 0);
    Ok((next, at as u64, padding))
}

impl Shared {
    /// Opens the log in `dir` (creating it, with a new chain id made by `new_chain`), repairs a
    /// torn tail and recovers the chain heads.
    pub(super) fn open(
        dir: &Path,
        new_chain: impl FnOnce() -> String,
    ) -> Result<(Arc<Shared>, Appender, Recovered), AuditError> {
        fs::create_dir_all(dir).map_err(storage)?;
        if dir.join("conf").exists() && dir.join("db").exists() {
            return Err(AuditError::Storage(format!(
                "{} holds an audit outbox in the earlier sled format; ship it with the release that wrote it, \
                 then remove the directory",
                dir.display()
            )));
        }
        let mut segments = list_segments(dir)?;
        let chain = match fs::read(dir.join("chain")) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| damaged("chain id", &dir.join("chain")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && segments.is_empty() => {
                let chain = new_chain();
                write_durably(dir, "chain", chain.as_bytes())?;
                chain
            }
            Err(e) => return Err(storage(e)),
        };
        let heads_path = dir.join("heads");
        let (heads_until, mut heads) = match fs::read(&heads_path) {
            Ok(bytes) => decode_heads(&bytes).ok_or_else(|| damaged("chain-head checkpoint", &heads_path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, HashMap::new()),
            Err(e) => return Err(storage(e)),
        };
        if segments.first().is_some_and(|s| s.first > heads_until) {
            // Segments are removed only once the checkpoint covers them.
            return Err(damaged("log (segments missing before the chain-head checkpoint)", dir));
        }
        let mut next = heads_until;
        let count = segments.len();
        for (i, segment) in segments.iter_mut().enumerate() {
            if segment.first != next && i > 0 {
                return Err(damaged("log (positions do not follow on) at", &segment.path));
            }
            let (after, intact, padding) = scan(segment, heads_until, &mut heads)?;
            if intact < segment.bytes {
                if i + 1 < count {
                    if !padding {
                        return Err(damaged("segment", &segment.path));
                    }
                } else {
                    // Zeros grown ahead of the records, and after them perhaps a group whose
                    // fsync never returned (none of it was acknowledged): cut both, so no
                    // stale record can ever follow a new one.
                    let file = OpenOptions::new().write(true).open(&segment.path).map_err(storage)?;
                    file.set_len(intact).map_err(storage)?;
                    file.sync_all().map_err(storage)?;
                    if !padding {
                        tracing::warn!(segment = %segment.path.display(), cut = segment.bytes - intact, "cut a torn tail off the audit outbox");
                    }
                }
                segment.bytes = intact;
            }
            next = after;
        }
        if segments.is_empty() {
            let path = segment_path(dir, next);
            File::create(&path).map_err(storage)?;
            sync_dir(dir)?;
            segments.push(Segment { first: next, path, bytes: 0 });
        }
        let oldest = Cursor { position: segments[0].first, segment: segments[0].first, offset: 0 };
        let shipped = fs::read(dir.join("shipped"))
            .ok()
            .and_then(|bytes| decode_cursor(&bytes))
            .filter(|c| {
                c.position <= next
                    && segments.iter().any(|s| s.first == c.segment && c.offset <= s.bytes && c.position >= s.first)
            })
            .unwrap_or(oldest);
        let active = segments.last().expect("at least one segment");
        let file = OpenOptions::new().write(true).open(&active.path).map_err(storage)?;
        let (first, bytes) = (active.first, active.bytes);
        let recovered = Recovered { chain, next, heads: heads.clone(), shipped: shipped.position };
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(State { segments, next, heads, shipped, sent: shipped }),
            reader: Mutex::new(None),
        });
        let appender = Appender { shared: shared.clone(), file, first, bytes, length: bytes };
        Ok((shared, appender, recovered))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The durable chain head of a stream.
    pub(super) fn head(&self, tenant: &str) -> Option<Head> {
        self.state().heads.get(tenant).copied()
    }

    /// The durable heads and the next durable position: where placing resumes after a
    /// failed commit.
    pub(super) fn durable(&self) -> (u64, HashMap<String, Head>) {
        let state = self.state();
        (state.next, state.heads.clone())
    }

    /// Up to `limit` durable entries after the `sent` cursor, oldest first, and the cursor after
    /// them.
    pub(super) fn read(&self, limit: usize) -> Result<(Vec<Entry>, Cursor), AuditError> {
        let (mut cursor, plan) = {
            let state = self.state();
            let plan: Vec<(u64, PathBuf, u64)> = state
                .segments
                .iter()
                .filter(|s| s.first >= state.sent.segment)
                .map(|s| (s.first, s.path.clone(), s.bytes))
                .collect();
            (state.sent, plan)
        };
        let mut entries = Vec::new();
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (first, path, bytes)) in plan.iter().enumerate() {
            if *first != cursor.segment {
                continue;
            }
            if reader.as_ref().is_none_or(|(open, _)| open != first) {
                *reader = Some((*first, File::open(path).map_err(storage)?));
            }
            let file = &reader.as_ref().expect("opened above").1;
            let mut chunk = Vec::new();
            while entries.len() < limit && cursor.offset < *bytes {
                let want = (*bytes - cursor.offset).min(READ_CHUNK as u64) as usize;
                chunk.resize(want, 0);
                file.read_exact_at(&mut chunk, cursor.offset).map_err(storage)?;
                let mut at = 0;
                while entries.len() < limit {
                    match decode(&chunk[at..]) {
                        Decoded::Record(record, used) if record.position == cursor.position => {
                            entries.push(Entry {
                                position: record.position,
                                tenant: record.tenant.to_string(),
                                time_ms: record.time_ms,
                                json: Arc::from(record.json),
                            });
                            at += used;
                            cursor.position += 1;
                            cursor.offset += used as u64;
                        }
                        // The chunk ends inside a record: read on from the cursor. (A chunk
                        // holds at least one whole record, so at its start this is damage.)
                        Decoded::Short if at > 0 => break,
                        _ => return Err(damaged("segment", path)),
                    }
                }
            }
            if entries.len() >= limit || cursor.offset < *bytes {
                break;
            }
            // This segment is read to its durable end: go on in the next one, if any.
            match plan.get(i + 1) {
                Some((next_first, _, _)) => cursor = Cursor { position: *next_first, segment: *next_first, offset: 0 },
                None => break,
            }
        }
        Ok((entries, cursor))
    }

    /// Moves the `sent` cursor on to `cursor` (the end of what [`Shared::read`] returned).
    pub(super) fn send(&self, cursor: Cursor) {
        let mut state = self.state();
        assert!(cursor.position >= state.sent.position, "the sent cursor never moves back");
        state.sent = cursor;
    }

    /// Moves the `sent` cursor back to the shipped one: what was sent and not released is read
    /// again.
    pub(super) fn rewind(&self) {
        let mut state = self.state();
        state.sent = state.shipped;
    }

    /// Marks what was sent up to `cursor` (a cursor [`Shared::send`] was given) as shipped,
    /// removes segments left wholly behind it, and returns how many entries that released (none
    /// for a cursor at or before the shipped one). The in-memory cursor is what counts: failing to write
    /// the cursor file or to remove a segment is logged, never an error (the one ships again,
    /// under the same ids; the other leaves a file to remove by hand).
    pub(super) fn release(&self, cursor: Cursor) -> u64 {
        let (cursor, released, removable): (Cursor, u64, Vec<PathBuf>) = {
            let mut state = self.state();
            if cursor.position <= state.shipped.position {
                return 0;
            }
            assert!(cursor.position <= state.sent.position, "only what was sent is released");
            let released = cursor.position - state.shipped.position;
            state.shipped = cursor;
            let keep_from = state.segments.iter().position(|s| s.first == cursor.segment).unwrap_or(0);
            (cursor, released, state.segments.drain(..keep_from).map(|s| s.path).collect())
        };
        if let Err(error) = fs::write(self.dir.join("shipped"), encode_cursor(cursor)) {
            tracing::warn!(%error, "writing the audit outbox's shipped cursor failed");
        }
        for path in removable {
            if let Err(error) = fs::remove_file(&path) {
                tracing::error!(%error, segment = %path.display(), "removing a shipped audit outbox segment failed");
            }
        }
        released
    }
}

impl Appender {
    /// Appends a group of encoded records (positions `first..next`) and makes it durable, then
    /// publishes it with the heads it moved. A segment that is full is closed first. On an
    /// error nothing of the group is published and the segment is cut back to its durable
    /// length.
    pub(super) fn append(
        &mut self,
        records: &[u8],
        first: u64,
        next: u64,
        moved: &HashMap<String, Head>,
    ) -> Result<(), AuditError> {
        if self.bytes >= SEGMENT_BYTES {
            self.roll(first)?;
        }
        let end = self.bytes + records.len() as u64;
        let written = self
            .grow(end)
            .and_then(|()| self.file.write_all_at(records, self.bytes))
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            // Whether any of it reached the disk is unknown; cut it (and the zeros) so the
            // next group follows the last durable one.
            let _ = self.file.set_len(self.bytes).and_then(|()| self.file.sync_data());
            self.length = self.bytes;
            return Err(storage(error));
        }
        self.bytes += records.len() as u64;
        let mut state = self.shared.state();
        assert_eq!(state.next, first, "groups are appended in position order");
        state.next = next;
        for (tenant, head) in moved {
            state.heads.insert(tenant.clone(), *head);
        }
        let active = state.segments.last_mut().expect("the newest segment");
        assert_eq!(active.first, self.first, "the appender writes the newest segment");
        active.bytes = self.bytes;
        Ok(())
    }

    /// Writes zeros after the file's end, [`ZERO_CHUNK`] at a time, until it reaches `end`;
    /// they become durable with the group's `fdatasync`.
    fn grow(&mut self, end: u64) -> std::io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        if end <= self.length {
            return Ok(());
        }
        let target = end.next_multiple_of(ZERO_CHUNK);
        while self.length < target {
            let n = (target - self.length).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], self.length)?;
            self.length += n as u64;
        }
        Ok(())
    }

    /// Closes the newest segment: checkpoints the heads, then starts `<first>.seg`.
    fn roll(&mut self, first: u64) -> Result<(), AuditError> {
        let heads = encode_heads(first, &self.shared.state().heads);
        write_durably(&self.shared.dir, "heads", &heads)?;
        let path = segment_path(&self.shared.dir, first);
        // An earlier roll that failed after creating the file left nothing acknowledged in it.
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(storage)?;
        sync_dir(&self.shared.dir)?;
        self.shared.state().segments.push(Segment { first, path, bytes: 0 });
        (self.file, self.first, self.bytes, self.length) = (file, first, 0, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64) -> Head {
        Head { seq, hash: [seq as u8; 32] }
    }

    /// Bytes of one record of [`group`] for a four-letter tenant.
    const RECORD: u64 = (HEADER + FIXED + 4 + 7) as u64;

    fn group(first: u64, count: u64, tenant: &str) -> (Vec<u8>, HashMap<String, Head>) {
        let mut buf = Vec::new();
        for position in first..first + count {
            let record = Record { position, time_ms: 7, head: head(position + 1), tenant, json: b"{\"e\":1}" };
            encode(&mut buf, &record).unwrap();
        }
        (buf, HashMap::from([(tenant.to_string(), head(first + count))]))
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_heads_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut appender, recovered) = Shared::open(dir.path(), || "c1".into()).unwrap();
        assert_eq!((recovered.next, recovered.heads.len()), (0, 0));
        let (buf, moved) = group(0, 3, "acme");
        appender.append(&buf, 0, 3, &moved).unwrap();
        drop(appender);
        let path = segment_path(dir.path(), 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), ZERO_CHUNK, "grown ahead with zeros");
        // A group whose fsync never returned, torn by the crash: its first record half
        // written, its second whole (its page reached the disk), the rest still zeros.
        let (torn, _) = group(3, 2, "acme");
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&torn[..RECORD as usize / 2], buf.len() as u64).unwrap();
        file.write_all_at(&torn[RECORD as usize..], buf.len() as u64 + RECORD).unwrap();

        let (shared, mut appender, recovered) = Shared::open(dir.path(), || unreachable!()).unwrap();
        assert_eq!((recovered.chain.as_str(), recovered.next), ("c1", 3));
        assert_eq!(recovered.heads["acme"], head(3));
        assert_eq!(fs::metadata(&path).unwrap().len(), buf.len() as u64, "the torn group and the zeros are cut");
        assert_eq!(shared.read(10).unwrap().0.len(), 3);

        // Position 3 again: the torn group's whole record 4, right after it, must not
        // come back after it.
        let (again, moved) = group(3, 1, "acme");
        appender.append(&again, 3, 4, &moved).unwrap();
        drop((shared, appender));
        let (shared, _, recovered) = Shared::open(dir.path(), || unreachable!()).unwrap();
        assert_eq!(recovered.next, 4);
        assert_eq!(shared.read(10).unwrap().0.len(), 4);
    }

    #[test]
    fn shipped_segments_are_removed_and_the_checkpoint_keeps_their_heads() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut appender, _) = Shared::open(dir.path(), || "c1".into()).unwrap();
        // Two groups per segment: a group that makes a segment pass SEGMENT_BYTES closes it.
        let per_group = (SEGMENT_BYTES / 2 / RECORD) as usize + 1;
        let mut position = 0;
        for tenant in ["acme", "globex", "acme", "initech"] {
            let (buf, moved) = group(position, per_group as u64, tenant);
            appender.append(&buf, position, position + per_group as u64, &moved).unwrap();
            position += per_group as u64;
        }
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
        // Ship everything the first segment holds, and a bit more.
        let (entries, cursor) = shared.read(2 * per_group + 5).unwrap();
        assert_eq!(entries.len(), 2 * per_group + 5);
        assert!(entries.windows(2).all(|w| w[1].position == w[0].position + 1));
        shared.send(cursor);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2, "sent is not shipped");
        assert_eq!(shared.release(cursor), 2 * per_group as u64 + 5);
        assert_eq!(shared.release(cursor), 0, "released once");
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1, "the shipped segment is removed");
        drop((shared, appender));

        let (shared, _, recovered) = Shared::open(dir.path(), || unreachable!()).unwrap();
        assert_eq!(recovered.next, position);
        assert_eq!(recovered.shipped, 2 * per_group as u64 + 5);
        assert_eq!(recovered.heads["globex"], head(2 * per_group as u64), "kept by the checkpoint");
        assert_eq!(recovered.heads["acme"], head(3 * per_group as u64));
        assert_eq!(recovered.heads["initech"], head(position));
        let (rest, _) = shared.read(usize::MAX).unwrap();
        assert_eq!(rest.len(), 2 * per_group - 5);
        assert_eq!(rest[0].position, 2 * per_group as u64 + 5);
    }

    #[test]
    fn damage_before_the_newest_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut appender, _) = Shared::open(dir.path(), || "c1".into()).unwrap();
        let per_group = (SEGMENT_BYTES / RECORD) as usize + 1;
        let (buf, moved) = group(0, per_group as u64, "acme");
        appender.append(&buf, 0, per_group as u64, &moved).unwrap();
        let (buf, moved) = group(per_group as u64, 1, "acme");
        appender.append(&buf, per_group as u64, per_group as u64 + 1, &moved).unwrap();
        drop(appender);
        let path = segment_path(dir.path(), 0);
        let mut content = fs::read(&path).unwrap();
        content[100] ^= 0xff;
        fs::write(&path, content).unwrap();
        assert!(matches!(Shared::open(dir.path(), || unreachable!()), Err(AuditError::Storage(_))));
    }
}
