//! The embedded audit sink: one segmented, append-only log per tenant.
//!
//! `<dir>/<tenant>/<index>.jsonl` holds one event per line; `index` (20 digits) is the position
//! of the segment's first line in the tenant's log, counted from the tenant's first event
//! ever, so positions stay valid as old segments are removed. A segment is closed once it
//! exceeds `segment_bytes`; closed segments older than `retention` or beyond
//! `max_bytes_per_tenant` are removed, oldest first: when a segment closes, and for every
//! tenant (written lately or not) by [`LocalLog::sweep`], which the audit module runs every
//! [`SWEEP_INTERVAL`]. A delivery is written (and readable) when
//! it returns; `sync` fsyncs every file written since the last one, then every directory that
//! gained a tenant or a segment since (each once), so a node with many tenants pays one fsync
//! per tenant per sync interval rather than per delivery, and a new tenant costs no fsync of
//! its own on the delivery path (but for closing a log written since its last sync, to make
//! room past the bounds below). From [`SYNCFS_FROM`] tenants written since the last sync, one
//! `syncfs` of the log's filesystem replaces their fsyncs: a burst of new tenants costs one
//! flush, not two per tenant. The outbox keeps the events until `sync` has returned. A torn
//! last line (a crash mid-append) is cut off when the tenant's log is opened; the outbox still
//! holds that event and delivers it again.
//!
//! Memory is bounded whatever the number of tenants: at most [`MAX_OPEN_FILES`] logs hold a
//! file descriptor and at most [`MAX_KEPT_LOGS`] are known in memory (their segments and next
//! position); the least recently written log goes first. Opening a log again finds its next
//! position by counting the lines of its newest segment — from the checkpoint in
//! `<tenant>/position` when one was left for that segment: a log dropped from memory with at
//! least [`CHECKPOINT_FROM`] bytes in its newest segment leaves one (segment, bytes, lines),
//! so only lines appended after it are counted. A checkpoint that does not match the segment
//! (a later segment, a file shorter than it says, a torn write) is ignored and every line is
//! counted; a segment only grows, so a matching one stays true however old it is.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{AuditSink, Delivered, SinkError};
use crate::audit::event::AuditEvent;
use crate::audit::outbox::Entry;

/// Tenant logs written since the last sync from which one `syncfs` replaces their fsyncs.
pub const SYNCFS_FROM: usize = 8;

/// Tenant log files kept open at once: one file descriptor each. A node with more tenants
/// closes the least recently written file to open another; the log's place is kept, so
/// opening it again costs one `open`.
pub const MAX_OPEN_FILES: usize = 256;

/// Tenant logs known in memory at once (a few hundred bytes each, more for a log of many
/// segments). Past it, the least recently written one is synced, closed and forgotten.
pub const MAX_KEPT_LOGS: usize = 4096;

/// A log forgotten with at least this much in its newest segment leaves a checkpoint, so
/// opening it again does not read the segment through.
pub const CHECKPOINT_FROM: u64 = 1 << 20;

/// How often every tenant's log is checked for segments past retention, so a tenant that no
/// longer writes loses its old events on time too.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// The checkpoint file in a tenant's directory.
const CHECKPOINT: &str = "position";

/// How the log bounds what it holds; tests shrink them.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    open_files: usize,
    kept_logs: usize,
    checkpoint_from: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { open_files: MAX_OPEN_FILES, kept_logs: MAX_KEPT_LOGS, checkpoint_from: CHECKPOINT_FROM }
    }
}

#[derive(Debug, Clone)]
pub struct LocalLogLimits {
    pub segment_bytes: u64,
    pub retention: Duration,
    pub max_bytes_per_tenant: u64,
}

struct Segment {
    first: u64,
    path: PathBuf,
    bytes: u64,
}

struct TenantLog {
    dir: PathBuf,
    /// When it last took a delivery (a counter, not a time): the least recent file is closed
    /// first.
    used: u64,
    /// Oldest first; the last one is appended to.
    segments: Vec<Segment>,
    /// Position of the next line.
    next: u64,
    /// The newest segment, open for appending; `None` once closed to free its descriptor
    /// (synced first).
    file: Option<File>,
    /// Written since its last fsync.
    dirty: bool,
    /// The directory gained a segment since its last fsync.
    dir_dirty: bool,
    /// A failed append may have left part of its batch that could not be cut off: the newest
    /// segment is counted again before the next append.
    recount: bool,
}

/// The tenant logs known in memory, and which of them hold an open file.
#[derive(Default)]
struct Logs {
    logs: HashMap<String, TenantLog>,
    /// `used` → tenant, for every log in `logs`: the first is the least recent.
    kept: std::collections::BTreeMap<u64, String>,
    /// `used` → tenant, for the logs whose file is open: the first is the least recent.
    open: std::collections::BTreeMap<u64, String>,
    clock: u64,
    /// The tenants whose log is dirty or whose directory is.
    dirty: std::collections::HashSet<String>,
    /// The root directory gained a tenant directory since its last fsync.
    root_dirty: bool,
    /// Syncing a log to close or forget it failed since the last sync: the next sync fails
    /// too, so the outbox sends everything it has not released again (a failed fsync may
    /// have dropped the pages, and syncing the file again may well succeed).
    sync_failed: bool,
    /// fsyncs of files and directories since the log was opened.
    fsyncs: u64,
}

impl Logs {
    /// Syncs and lets go of the least recently written logs until at most `bound` hold an open
    /// file (`forget` false: their files are closed) or are known at all (`forget`: they are
    /// dropped from memory, leaving a checkpoint from `checkpoint_from` bytes). A log leaves
    /// only once it is durable: one that fails to sync stays as it was and the next oldest goes
    /// instead. The delivery that made room, written already, does not fail for it, but the
    /// next sync does (`sync_failed`).
    fn let_go(&mut self, forget: bool, bound: usize, checkpoint_from: u64) {
        let mut from = 0;
        loop {
            let order = if forget { &self.kept } else { &self.open };
            if order.len() <= bound {
                return;
            }
            let Some((&used, oldest)) = order.range(from..).next() else { return };
            let oldest = oldest.clone();
            from = used + 1;
            if let Some(log) = self.logs.get_mut(&oldest) {
                if let Err(e) = log.sync(&mut self.fsyncs) {
                    let action = if forget { "forget it" } else { "close its file" };
                    tracing::warn!(tenant_id = %oldest, error = %e, "audit log: syncing a log to {action} failed");
                    self.sync_failed = true;
                    continue;
                }
                if forget {
                    log.leave_checkpoint(checkpoint_from);
                    self.logs.remove(&oldest);
                } else {
                    log.file = None;
                }
                self.dirty.remove(&oldest);
            }
            self.open.remove(&used);
            if forget {
                self.kept.remove(&used);
            }
        }
    }
}

/// Filters and paging for reading a tenant's log.
#[derive(Debug, Clone, Default)]
pub struct ReadFilter {
    /// Start at this position (inclusive).
    pub from: u64,
    pub limit: usize,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Full CloudEvents types to include; empty means all.
    pub types: Vec<String>,
}

/// A page read from a tenant's log.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<(u64, AuditEvent)>,
    /// Where the next page starts.
    pub next: u64,
}

pub struct LocalLog {
    dir: PathBuf,
    limits: LocalLogLimits,
    bounds: Bounds,
    tenants: Arc<Mutex<Logs>>,
}

fn io(e: impl std::fmt::Display) -> SinkError {
    SinkError::Storage(e.to_string())
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.jsonl")
}

/// Segments of one tenant's directory, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, SinkError> {
    let mut segments = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")).and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = entry.metadata().map_err(io)?.len();
        segments.push(Segment { first, path: entry.path(), bytes });
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// Counts the complete lines of a segment from `offset` (the end of a line) on, and cuts off a
/// torn last line; returns the lines counted and the segment's length.
fn repair_and_count(path: &Path, offset: u64) -> Result<(u64, u64), SinkError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buffer = vec![0u8; 64 << 10];
    let (mut lines, mut read, mut complete) = (0u64, offset, offset);
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        let chunk = &buffer[..n];
        if let Some(last) = chunk.iter().rposition(|b| *b == b'\n') {
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            complete = read + last as u64 + 1;
        }
        read += n as u64;
    }
    if complete < read {
        file.set_len(complete).map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    Ok((lines, complete))
}

/// A newest segment's length and line count at some moment, left when its log was forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    first: u64,
    bytes: u64,
    lines: u64,
}

impl Checkpoint {
    fn render(&self) -> String {
        format!("v1 {} {} {} end\n", self.first, self.bytes, self.lines)
    }

    /// None for anything but a whole checkpoint (a torn write lacks the closing `end`).
    fn parse(text: &str) -> Option<Checkpoint> {
        let line = text.strip_suffix('\n')?;
        let mut fields = line.split(' ');
        let (Some("v1"), Some(first), Some(bytes), Some(lines), Some("end"), None) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        Some(Checkpoint { first: first.parse().ok()?, bytes: bytes.parse().ok()?, lines: lines.parse().ok()? })
    }

    /// The checkpoint left in `dir` if it holds for `segment`: the same segment, no longer
    /// than the file.
    fn find(dir: &Path, segment: &Segment) -> Option<Checkpoint> {
        let text = fs::read_to_string(dir.join(CHECKPOINT)).ok()?;
        Checkpoint::parse(&text).filter(|c| c.first == segment.first && c.bytes <= segment.bytes && c.lines <= c.bytes)
    }
}

impl TenantLog {
    /// Opens a tenant's log, creating its directory and first segment if need be; returns
    /// the log and whether the directory is new (its entry in the root is not yet durable).
    /// New entries are made durable by the next [`TenantLog::sync`] and root sync.
    fn open(dir: PathBuf) -> Result<(TenantLog, bool), SinkError> {
        let created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(e)),
        };
        // A directory just made holds nothing to list.
        let mut segments = if created { Vec::new() } else { list_segments(&dir)? };
        let (next, dir_dirty) = match segments.last_mut() {
            Some(last) => {
                let known =
                    Checkpoint::find(&dir, last).unwrap_or(Checkpoint { first: last.first, bytes: 0, lines: 0 });
                let (lines, bytes) = repair_and_count(&last.path, known.bytes)?;
                last.bytes = bytes;
                (last.first + known.lines + lines, false)
            }
            None => {
                segments.push(Segment { first: 0, path: dir.join(segment_name(0)), bytes: 0 });
                (0, true)
            }
        };
        let active = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let file = OpenOptions::new().create(true).append(true).open(&active).map_err(io)?;
        let log = TenantLog { dir, used: 0, segments, next, file: Some(file), dirty: false, dir_dirty, recount: false };
        Ok((log, created))
    }

    fn append(&mut self, lines: &[&[u8]], limits: &LocalLogLimits, fsyncs: &mut u64) -> Result<(), SinkError> {
        if self.recount {
            let active = self.segments.last_mut().expect("a tenant log always has an active segment");
            let (lines, bytes) = repair_and_count(&active.path, 0)?;
            active.bytes = bytes;
            self.next = active.first + lines;
            // Whole lines the failed append left are in the count now, and not yet durable.
            self.dirty = true;
            self.recount = false;
        }
        let mut buffer = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            buffer.extend_from_slice(line);
            buffer.push(b'\n');
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let active = self.segments.last().expect("a tenant log always has an active segment");
                self.file.insert(OpenOptions::new().append(true).open(&active.path).map_err(io)?)
            }
        };
        if let Err(e) = file.write_all(&buffer) {
            // Part of the batch may be in the file, where the next append would join it to its
            // first line: cut back to what the log counts, or count again before appending.
            let counted = self.segments.last().map_or(0, |s| s.bytes);
            if file.set_len(counted).is_err() {
                self.recount = true;
            }
            return Err(io(e));
        }
        self.dirty = true;
        self.next += lines.len() as u64;
        let active = self.segments.last_mut().expect("a tenant log always has an active segment");
        active.bytes += buffer.len() as u64;
        if active.bytes >= limits.segment_bytes {
            // The closing segment is made durable now: only the newest one is synced later.
            self.sync(fsyncs)?;
            let path = self.dir.join(segment_name(self.next));
            self.file = Some(OpenOptions::new().create(true).append(true).open(&path).map_err(io)?);
            self.segments.push(Segment { first: self.next, path, bytes: 0 });
            self.dir_dirty = true;
            // What was written stands; old segments are tried again at the next roll or sweep.
            if let Err(e) = self.enforce_retention(limits) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "audit log: applying retention failed");
            }
        }
        Ok(())
    }

    /// Makes what was written durable, and the directory's new segment entries.
    fn sync(&mut self, fsyncs: &mut u64) -> Result<(), SinkError> {
        if let (true, Some(file)) = (self.dirty, &self.file) {
            file.sync_data().map_err(io)?;
            *fsyncs += 1;
        }
        self.dirty = false;
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            *fsyncs += 1;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Leaves a checkpoint of the newest segment if it is long enough to be worth one; called
    /// once what was written is durable. Failing to is harmless: the lines are counted.
    fn leave_checkpoint(&self, from: u64) {
        let Some(active) = self.segments.last() else { return };
        if active.bytes < from || self.recount {
            return;
        }
        let checkpoint = Checkpoint { first: active.first, bytes: active.bytes, lines: self.next - active.first };
        if let Err(e) = fs::write(self.dir.join(CHECKPOINT), checkpoint.render()) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "audit log: leaving a checkpoint failed");
        }
    }

    /// Everything written is durable: a filesystem-wide sync covered it.
    fn synced(&mut self) {
        self.dirty = false;
        self.dir_dirty = false;
    }

    /// Removes closed segments past the age or size limit; the active one always stays.
    fn enforce_retention(&mut self, limits: &LocalLogLimits) -> Result<(), SinkError> {
        let removed = remove_expired(&self.segments, limits)?;
        self.segments.drain(..removed);
        Ok(())
    }
}

/// Removes the oldest of `segments` (oldest first) while they are past the age or size limit,
/// all but the newest at most; returns how many it removed.
fn remove_expired(segments: &[Segment], limits: &LocalLogLimits) -> Result<usize, SinkError> {
    let now = SystemTime::now();
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut removed = 0;
    for oldest in &segments[..segments.len().saturating_sub(1)] {
        let modified = fs::metadata(&oldest.path).and_then(|m| m.modified()).unwrap_or(now);
        let expired = now.duration_since(modified).unwrap_or_default() > limits.retention;
        if !expired && total <= limits.max_bytes_per_tenant {
            break;
        }
        match fs::remove_file(&oldest.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        total -= oldest.bytes;
        removed += 1;
    }
    Ok(removed)
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

impl LocalLog {
    pub fn open(dir: &Path, limits: LocalLogLimits) -> Result<LocalLog, SinkError> {
        LocalLog::open_bounded(dir, limits, Bounds::default())
    }

    fn open_bounded(dir: &Path, limits: LocalLogLimits, bounds: Bounds) -> Result<LocalLog, SinkError> {
        assert!(bounds.open_files >= 1 && bounds.kept_logs >= bounds.open_files, "bounds: {bounds:?}");
        fs::create_dir_all(dir).map_err(io)?;
        sync_dir(dir)?;
        Ok(LocalLog { dir: dir.to_path_buf(), limits, bounds, tenants: Arc::new(Mutex::new(Logs::default())) })
    }

    /// fsyncs of tenant files and directories since the log was opened.
    pub fn fsyncs(&self) -> u64 {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner()).fsyncs
    }

    fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.dir.join(tenant)
    }

    /// Applies retention to every tenant's log on disk, one tenant at a time (deliveries go on
    /// in between). A tenant whose log fails is logged and skipped. Blocking: run it off the
    /// async threads. Returns the segments removed.
    pub fn sweep(&self) -> Result<usize, SinkError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Some(tenant) = entry.file_name().to_str().map(str::to_string) else { continue };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // Under the lock, so a delivery never opens the log while its segments go.
            let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            let swept = match tenants.logs.get_mut(&tenant) {
                Some(log) => {
                    let before = log.segments.len();
                    log.enforce_retention(&self.limits).map(|()| before - log.segments.len())
                }
                None => list_segments(&entry.path()).and_then(|segments| remove_expired(&segments, &self.limits)),
            };
            match swept {
                Ok(n) => removed += n,
                Err(e) => tracing::warn!(tenant_id = %tenant, error = %e, "audit log: applying retention failed"),
            }
        }
        Ok(removed)
    }

    /// Reads one page of a tenant's log. Positions before the oldest kept segment are skipped.
    pub fn read(&self, tenant: &str, filter: &ReadFilter) -> Result<Page, SinkError> {
        let segments = list_segments(&self.tenant_dir(tenant))?;
        let mut events = Vec::new();
        let mut next = filter.from;
        for (i, segment) in segments.iter().enumerate() {
            let end = segments.get(i + 1).map(|s| s.first).unwrap_or(u64::MAX);
            if end <= filter.from {
                continue;
            }
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                // Removed by retention since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            let mut position = segment.first;
            next = next.max(position);
            for line in BufReader::new(file).split(b'\n') {
                let line = line.map_err(io)?;
                let here = position;
                position += 1;
                if here < filter.from {
                    continue;
                }
                next = position;
                let Ok(event) = serde_json::from_slice::<AuditEvent>(&line) else { continue };
                if !filter.types.is_empty() && !filter.types.contains(&event.kind) {
                    continue;
                }
                if filter.since_ms.is_some() || filter.until_ms.is_some() {
                    let t = event.time_ms().unwrap_or(0);
                    if filter.since_ms.is_some_and(|s| t < s) || filter.until_ms.is_some_and(|u| t >= u) {
                        continue;
                    }
                }
                events.push((here, event));
                if events.len() >= filter.limit {
                    return Ok(Page { events, next });
                }
            }
        }
        Ok(Page { events, next })
    }

    /// Every raw line of a tenant's log, oldest first, for verification. Returns the position
    /// of the first line it holds (above 0 once retention removed segments).
    pub fn for_each_raw(&self, tenant: &str, mut f: impl FnMut(&[u8])) -> Result<u64, SinkError> {
        let mut first = None;
        for segment in list_segments(&self.tenant_dir(tenant))? {
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                // Removed by retention since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            first.get_or_insert(segment.first);
            for line in BufReader::new(file).split(b'\n') {
                f(&line.map_err(io)?);
            }
        }
        Ok(first.unwrap_or(0))
    }

    /// Positions `[first, next)` a tenant's log holds now.
    #[cfg(test)]
    fn extent(&self, tenant: &str) -> Result<(u64, u64), SinkError> {
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = tenants.logs.get(tenant) {
            return Ok((log.segments.first().map(|s| s.first).unwrap_or(0), log.next));
        }
        let segments = list_segments(&self.tenant_dir(tenant))?;
        let first = segments.first().map(|s| s.first).unwrap_or(0);
        let next = match segments.last() {
            Some(last) => {
                let file = File::open(&last.path).map_err(io)?;
                last.first + BufReader::new(file).split(b'\n').count() as u64
            }
            None => 0,
        };
        Ok((first, next))
    }
}

#[async_trait::async_trait]
impl AuditSink for LocalLog {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn deliver(&self, batch: &[Entry]) -> Result<Delivered, SinkError> {
        let mut by_tenant: HashMap<String, Vec<Arc<[u8]>>> = HashMap::new();
        for entry in batch {
            by_tenant.entry(entry.tenant.clone()).or_default().push(entry.json.clone());
        }
        let tenants = self.tenants.clone();
        let dir = self.dir.clone();
        let limits = self.limits.clone();
        let bounds = self.bounds;
        tokio::task::spawn_blocking(move || -> Result<Delivered, SinkError> {
            let mut tenants = tenants.lock().unwrap_or_else(|p| p.into_inner());
            for (tenant, lines) in by_tenant {
                let Logs { logs, kept, open, clock, dirty, root_dirty, fsyncs, .. } = &mut *tenants;
                *clock += 1;
                let log = match logs.entry(tenant.clone()) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let (log, created) = TenantLog::open(dir.join(v.key()))?;
                        *root_dirty |= created;
                        v.insert(log)
                    }
                };
                kept.remove(&log.used);
                open.remove(&log.used);
                log.used = *clock;
                kept.insert(*clock, tenant.clone());
                open.insert(*clock, tenant.clone());
                let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_ref()).collect();
                log.append(&lines, &limits, fsyncs)?;
                if log.dirty || log.dir_dirty {
                    dirty.insert(tenant);
                }
                tenants.let_go(false, bounds.open_files, bounds.checkpoint_from);
                tenants.let_go(true, bounds.kept_logs, bounds.checkpoint_from);
            }
            Ok(Delivered::Written)
        })
        .await
        .map_err(io)?
    }

    async fn sync(&self) -> Result<(), SinkError> {
        let tenants = self.tenants.clone();
        let root = self.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), SinkError> {
            let mut tenants = tenants.lock().unwrap_or_else(|p| p.into_inner());
            let Logs { logs, dirty, root_dirty, sync_failed, fsyncs, .. } = &mut *tenants;
            if std::mem::take(sync_failed) {
                return Err(SinkError::Storage(
                    "syncing a tenant log to close it failed since the last sync; sending again".into(),
                ));
            }
            if dirty.len() >= SYNCFS_FROM {
                // One barrier for all of them: syncfs writes back every dirty file and directory
                // of the log's filesystem and flushes it, as their fsyncs one by one would (and
                // reports writeback errors, since Linux 5.8).
                let root_dir = File::open(&root).map_err(io)?;
                nix::unistd::syncfs(root_dir.as_raw_fd()).map_err(|e| SinkError::Storage(format!("syncfs: {e}")))?;
                *fsyncs += 1;
                for tenant in dirty.drain() {
                    if let Some(log) = logs.get_mut(&tenant) {
                        log.synced();
                    }
                }
                *root_dirty = false;
                return Ok(());
            }
            let written: Vec<String> = dirty.iter().cloned().collect();
            for tenant in written {
                if let Some(log) = logs.get_mut(&tenant) {
                    log.sync(fsyncs)?;
                }
                dirty.remove(&tenant);
            }
            // After the tenants' own files and directories: one fsync covers every tenant
            // directory created since the last sync.
            if *root_dirty {
                sync_dir(&root)?;
                *fsyncs += 1;
                *root_dirty = false;
            }
            Ok(())
        })
        .await
        .map_err(io)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tenant: &str, position: u64, kind: &str, time_ms: u64) -> Entry {
        let event = serde_json::json!({
            "specversion": "1.0", "id": format!("{tenant}-{position}"), "source": "custos://node/1",
            "type": kind, "time": crate::audit::event::rfc3339_ms(time_ms),
            "datacontenttype": "application/json", "tenant": tenant, "auditschema": 1,
            "chain": "c", "chainseq": position + 1, "chainprev": "00", "chainhash": "00",
            "data": {"actor": {"kind": "admin", "id": "a"}, "outcome": "success"}
        });
        Entry { position, tenant: tenant.into(), time_ms, json: Arc::from(serde_json::to_vec(&event).unwrap()) }
    }

    fn limits(segment_bytes: u64) -> LocalLogLimits {
        LocalLogLimits { segment_bytes, retention: Duration::from_secs(3600), max_bytes_per_tenant: u64::MAX }
    }

    #[tokio::test]
    async fn tenants_get_separate_logs_read_back_in_order_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalLog::open(dir.path(), limits(1_000)).unwrap();
        let batch: Vec<Entry> = (0..20)
            .map(|i| {
                let kind = if i % 2 == 0 { "dev.custos.key.encrypt" } else { "dev.custos.key.decrypt" };
                entry(if i % 4 == 3 { "globex" } else { "acme" }, i, kind, 1_000 + i)
            })
            .collect();
        log.deliver(&batch).await.unwrap();
        let all = log.read("acme", &ReadFilter { limit: 100, ..Default::default() }).unwrap();
        assert_eq!(all.events.len(), 15);
        assert!(all.events.iter().all(|(_, e)| e.tenant == "acme"));
        assert!(all.events.windows(2).all(|w| w[0].1.chainseq < w[1].1.chainseq));
        assert!(list_segments(&dir.path().join("acme")).unwrap().len() > 1, "segments were not rolled");

        let page = log.read("acme", &ReadFilter { limit: 4, ..Default::default() }).unwrap();
        let rest = log.read("acme", &ReadFilter { from: page.next, limit: 100, ..Default::default() }).unwrap();
        assert_eq!(page.events.len() + rest.events.len(), 15);
        assert_eq!(rest.events[0].0, page.next);

        let decrypts = log
            .read(
                "acme",
                &ReadFilter { limit: 100, types: vec!["dev.custos.key.decrypt".into()], ..Default::default() },
            )
            .unwrap();
        assert!(decrypts.events.iter().all(|(_, e)| e.kind == "dev.custos.key.decrypt"));
        let window = log
            .read(
                "acme",
                &ReadFilter { limit: 100, since_ms: Some(1_004), until_ms: Some(1_008), ..Default::default() },
            )
            .unwrap();
        assert_eq!(
            window.events.iter().map(|(_, e)| e.time_ms().unwrap()).collect::<Vec<_>>(),
            vec![1_004, 1_005, 1_006]
        );
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_and_positions_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LocalLog::open(dir.path(), limits(1 << 20)).unwrap();
            log.deliver(&[
                entry("acme", 0, "dev.custos.key.encrypt", 1),
                entry("acme", 1, "dev.custos.key.encrypt", 2),
            ])
            .await
            .unwrap();
        }
        let segment = dir.path().join("acme").join(segment_name(0));
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(b"{\"torn").unwrap();
        let log = LocalLog::open(dir.path(), limits(1 << 20)).unwrap();
        log.deliver(&[entry("acme", 2, "dev.custos.key.encrypt", 3)]).await.unwrap();
        let page = log.read("acme", &ReadFilter { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(page.events.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(log.extent("acme").unwrap(), (0, 3));
    }

    #[tokio::test]
    async fn more_tenants_than_open_files_still_append_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalLog::open(dir.path(), limits(1 << 20)).unwrap();
        let tenants: Vec<String> = (0..MAX_OPEN_FILES + 10).map(|i| format!("t{i}")).collect();
        for round in 0..2 {
            for tenant in &tenants {
                log.deliver(&[entry(tenant, round, "dev.custos.key.encrypt", round)]).await.unwrap();
            }
            let logs = log.tenants.lock().unwrap();
            let files = logs.logs.values().filter(|l| l.file.is_some()).count();
            assert!(files <= MAX_OPEN_FILES && logs.open.len() == files, "{files} open files");
        }
        // The first tenants were closed and opened again: their second event follows the first.
        for tenant in [&tenants[0], &tenants[MAX_OPEN_FILES + 9]] {
            let page = log.read(tenant, &ReadFilter { limit: 10, ..Default::default() }).unwrap();
            assert_eq!(page.events.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![0, 1]);
        }
    }

    fn positions(log: &LocalLog, tenant: &str) -> Vec<u64> {
        let page = log.read(tenant, &ReadFilter { limit: 100, ..Default::default() }).unwrap();
        page.events.iter().map(|(p, _)| *p).collect()
    }

    #[tokio::test]
    async fn more_tenants_than_kept_logs_are_forgotten_durably_and_continue_in_place() {
        let dir = tempfile::tempdir().unwrap();
        // Checkpoints from 1 KiB: the first rounds are counted, the later ones checkpointed.
        let bounds = Bounds { open_files: 2, kept_logs: 4, checkpoint_from: 1024 };
        let log = LocalLog::open_bounded(dir.path(), limits(1 << 20), bounds).unwrap();
        let tenants: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        for round in 0..6 {
            for tenant in &tenants {
                let batch = [
                    entry(tenant, 2 * round, "dev.custos.key.encrypt", round),
                    entry(tenant, 2 * round + 1, "dev.custos.key.encrypt", round),
                ];
                log.deliver(&batch).await.unwrap();
            }
            let logs = log.tenants.lock().unwrap();
            assert!(logs.logs.len() <= 4 && logs.kept.len() == logs.logs.len(), "{} logs kept", logs.logs.len());
            assert!(logs.open.len() <= 2, "{} files open", logs.open.len());
            assert!(logs.dirty.iter().all(|t| logs.logs.contains_key(t)), "a forgotten log is pending a sync");
        }
        for tenant in &tenants {
            assert_eq!(positions(&log, tenant), (0..12).collect::<Vec<_>>(), "{tenant}");
        }
        // Forgotten logs past 1 KiB left a checkpoint that agrees with their segment.
        let checkpoint = fs::read_to_string(dir.path().join("t0").join(CHECKPOINT)).unwrap();
        let checkpoint = Checkpoint::parse(&checkpoint).unwrap();
        let segment = list_segments(&dir.path().join("t0")).unwrap().pop().unwrap();
        assert_eq!(checkpoint.first, 0);
        assert!(checkpoint.bytes >= 1024 && checkpoint.bytes <= segment.bytes, "{checkpoint:?}");
        let (lines, _) = repair_and_count(&segment.path, 0).unwrap();
        let (after, _) = repair_and_count(&segment.path, checkpoint.bytes).unwrap();
        assert_eq!(checkpoint.lines + after, lines);
    }

    #[test]
    fn a_matching_checkpoint_spares_counting_and_any_other_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = dir.path().join("acme");
        fs::create_dir(&tenant).unwrap();
        let line = b"{}\n";
        fs::write(tenant.join(segment_name(100)), line.repeat(5)).unwrap();
        let open_next = || TenantLog::open(tenant.clone()).unwrap().0.next;
        assert_eq!(open_next(), 105);

        // A checkpoint is trusted for the bytes it covers (here it claims more lines than the
        // file holds, which shows its count is used); only the lines after it are counted.
        let at = |first: u64, bytes: u64, lines: u64| {
            fs::write(tenant.join(CHECKPOINT), Checkpoint { first, bytes, lines }.render()).unwrap();
        };
        at(100, 9, 7);
        assert_eq!(open_next(), 100 + 7 + 2);
        // Another segment's, one longer than the file, or a torn one: every line is counted.
        at(0, 9, 3);
        assert_eq!(open_next(), 105);
        at(100, 16, 5);
        assert_eq!(open_next(), 105);
        fs::write(tenant.join(CHECKPOINT), "v1 100 9 7").unwrap();
        assert_eq!(open_next(), 105);
        fs::write(tenant.join(CHECKPOINT), "v1 100 9 7 end\n").unwrap();
        // A torn line after the checkpoint is cut off.
        OpenOptions::new().append(true).open(tenant.join(segment_name(100))).unwrap().write_all(b"{\"to").unwrap();
        assert_eq!(open_next(), 100 + 7 + 2);
        assert_eq!(fs::metadata(tenant.join(segment_name(100))).unwrap().len(), 15);
        assert_eq!(Checkpoint::parse("v1 1 2 3 end extra\n"), None);
    }

    #[tokio::test]
    async fn new_tenant_directories_and_segments_wait_for_sync_and_sync_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalLog::open(dir.path(), limits(300)).unwrap();
        let batch: Vec<Entry> = (0..6)
            .map(|i| entry(if i % 2 == 0 { "acme" } else { "globex" }, i / 2, "dev.custos.key.encrypt", i))
            .collect();
        log.deliver(&batch).await.unwrap();
        {
            let logs = log.tenants.lock().unwrap();
            assert!(logs.root_dirty, "new tenant directories are not pending a root sync");
            assert!(logs.logs.values().all(|l| l.dir_dirty), "new segments are not pending a sync");
            assert_eq!(logs.dirty.len(), 2);
            assert!(logs.logs.values().all(|l| l.segments.len() > 1), "segments were not rolled");
        }
        let before = log.fsyncs();
        log.sync().await.unwrap();
        // Each tenant's directory (its files were synced when they rolled), then the root.
        assert_eq!(log.fsyncs(), before + 3);
        let logs = log.tenants.lock().unwrap();
        assert!(!logs.root_dirty && logs.dirty.is_empty());
        assert!(logs.logs.values().all(|l| !l.dir_dirty && !l.dirty), "sync left entries pending");
    }

    #[tokio::test]
    async fn many_tenants_written_since_the_last_sync_take_one_filesystem_sync() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalLog::open(dir.path(), limits(1 << 20)).unwrap();
        let batch: Vec<Entry> =
            (0..SYNCFS_FROM as u64).map(|i| entry(&format!("tenant-{i}"), 0, "dev.custos.key.encrypt", i)).collect();
        log.deliver(&batch).await.unwrap();
        let before = log.fsyncs();
        log.sync().await.unwrap();
        assert_eq!(log.fsyncs(), before + 1, "one syncfs for every tenant written");
        let logs = log.tenants.lock().unwrap();
        assert!(!logs.root_dirty && logs.dirty.is_empty());
        assert!(logs.logs.values().all(|l| !l.dir_dirty && !l.dirty), "sync left entries pending");
    }

    #[tokio::test]
    async fn what_a_failed_append_left_behind_is_counted_again_before_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalLog::open(dir.path(), limits(1 << 20)).unwrap();
        log.deliver(&[entry("acme", 0, "dev.custos.key.encrypt", 0)]).await.unwrap();
        // A failed append left one whole line of its batch and part of the next, and could
        // not cut them off.
        let segment = dir.path().join("acme").join(segment_name(0));
        let mut left = entry("acme", 1, "dev.custos.key.encrypt", 1).json.to_vec();
        left.extend_from_slice(b"\n{\"part");
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(&left).unwrap();
        log.tenants.lock().unwrap().logs.get_mut("acme").unwrap().recount = true;
        // The retry of the whole batch follows whole lines only; the line it left counts.
        log.deliver(&[entry("acme", 1, "dev.custos.key.encrypt", 1), entry("acme", 2, "dev.custos.key.encrypt", 2)])
            .await
            .unwrap();
        let page = log.read("acme", &ReadFilter { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(page.events.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(page.events.iter().map(|(_, e)| e.chainseq).collect::<Vec<_>>(), vec![1, 2, 2, 3]);
        assert_eq!(log.extent("acme").unwrap(), (0, 4));
    }

    #[tokio::test]
    async fn the_sweep_applies_retention_to_tenants_that_no_longer_write() {
        let dir = tempfile::tempdir().unwrap();
        // About 290 bytes an event: four to a segment.
        let limits = LocalLogLimits {
            segment_bytes: 1000,
            retention: Duration::from_secs(3600),
            max_bytes_per_tenant: u64::MAX,
        };
        let log = LocalLog::open(dir.path(), limits.clone()).unwrap();
        for tenant in ["kept", "gone"] {
            for i in 0..9 {
                log.deliver(&[entry(tenant, i, "dev.custos.key.encrypt", i)]).await.unwrap();
            }
            let firsts: Vec<u64> = list_segments(&dir.path().join(tenant)).unwrap().iter().map(|s| s.first).collect();
            assert_eq!(firsts, [0, 4, 8], "{tenant}");
        }
        assert_eq!(log.sweep().unwrap(), 0, "nothing is past retention yet");
        // Their closed segments were last written two hours ago.
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for tenant in ["kept", "gone"] {
            for segment in &list_segments(&dir.path().join(tenant)).unwrap()[..2] {
                File::options().write(true).open(&segment.path).unwrap().set_modified(two_hours_ago).unwrap();
            }
        }
        // "kept" is in this log's memory; "gone" only on disk.
        let fresh = LocalLog::open(dir.path(), limits).unwrap();
        fresh.deliver(&[entry("kept", 9, "dev.custos.key.encrypt", 9)]).await.unwrap();
        assert_eq!(fresh.sweep().unwrap(), 4, "each tenant's two closed segments");
        for (tenant, last) in [("kept", 9), ("gone", 8)] {
            let page = fresh.read(tenant, &ReadFilter { limit: 100, ..Default::default() }).unwrap();
            let positions: Vec<u64> = page.events.iter().map(|(p, _)| *p).collect();
            assert_eq!(positions, (8..=last).collect::<Vec<_>>(), "{tenant}");
        }
        // The kept log goes on appending after its segments went.
        fresh.deliver(&[entry("kept", 10, "dev.custos.key.encrypt", 10)]).await.unwrap();
        assert_eq!(fresh.extent("kept").unwrap(), (8, 11));
    }

    #[tokio::test]
    async fn retention_removes_the_oldest_closed_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let limits =
            LocalLogLimits { segment_bytes: 300, retention: Duration::from_secs(3600), max_bytes_per_tenant: 900 };
        let log = LocalLog::open(dir.path(), limits).unwrap();
        for i in 0..40 {
            log.deliver(&[entry("acme", i, "dev.custos.key.encrypt", i)]).await.unwrap();
        }
        let (first, next) = log.extent("acme").unwrap();
        assert!(first > 0, "nothing was removed");
        assert_eq!(next, 40);
        let page = log.read("acme", &ReadFilter { limit: 100, ..Default::default() }).unwrap();
        assert_eq!(page.events.first().unwrap().0, first);
        assert_eq!(page.events.last().unwrap().0, 39);
    }
}
