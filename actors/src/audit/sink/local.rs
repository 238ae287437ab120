//! The embedded audit sink: one segmented, append-only log per tenant.
//!
//! `<dir>/<tenant>/<index>.jsonl` holds one event per line; `index` (20 digits) is the position
//! of the segment's first line in the tenant's log, counted from the tenant's first event
//! ever, so positions stay valid as old segments are removed. A segment is closed once it
//! exceeds `segment_bytes`; closed segments older than `retention` or beyond
//! `max_bytes_per_tenant` are removed, oldest first. A delivery is written (and readable) when
//! it returns; `sync` fsyncs every file written since the last one, then every directory that
//! gained a tenant or a segment since (each once), so a node with many tenants pays one fsync
//! per tenant per sync interval rather than per delivery, and a new tenant costs no fsync of
//! its own on the delivery path. From [`SYNCFS_FROM`] tenants written since the last sync, one
//! `syncfs` of the log's filesystem replaces their fsyncs: a burst of new tenants costs one
//! flush, not two per tenant. The outbox keeps the events until `sync` has returned. A torn last line (a crash mid-append) is cut off when the
//! tenant's log is opened; the outbox still holds that event and delivers it again.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
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
const MAX_OPEN_FILES: usize = 256;

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
}

/// The tenant logs this node has written to, and which of them hold an open file.
#[derive(Default)]
struct Logs {
    logs: HashMap<String, TenantLog>,
    /// `used` → tenant, for the logs whose file is open: the first is the least recent.
    open: std::collections::BTreeMap<u64, String>,
    clock: u64,
    /// The tenants whose log is dirty or whose directory is.
    dirty: std::collections::HashSet<String>,
    /// The root directory gained a tenant directory since its last fsync.
    root_dirty: bool,
    /// fsyncs of files and directories since the log was opened.
    fsyncs: u64,
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

/// Counts the complete lines of a segment and cuts off a torn last line.
fn repair_and_count(path: &Path) -> Result<(u64, u64), SinkError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
    let mut content = Vec::new();
    file.read_to_end(&mut content).map_err(io)?;
    let complete = content.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
    if complete < content.len() {
        file.set_len(complete as u64).map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    let lines = content[..complete].iter().filter(|b| **b == b'\n').count() as u64;
    Ok((lines, complete as u64))
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
                let (lines, bytes) = repair_and_count(&last.path)?;
                last.bytes = bytes;
                (last.first + lines, false)
            }
            None => {
                segments.push(Segment { first: 0, path: dir.join(segment_name(0)), bytes: 0 });
                (0, true)
            }
        };
        let active = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let file = OpenOptions::new().create(true).append(true).open(&active).map_err(io)?;
        Ok((TenantLog { dir, used: 0, segments, next, file: Some(file), dirty: false, dir_dirty }, created))
    }

    fn append(&mut self, lines: &[&[u8]], limits: &LocalLogLimits, fsyncs: &mut u64) -> Result<(), SinkError> {
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
        file.write_all(&buffer).map_err(io)?;
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
            self.enforce_retention(limits)?;
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

    /// Everything written is durable: a filesystem-wide sync covered it.
    fn synced(&mut self) {
        self.dirty = false;
        self.dir_dirty = false;
    }

    /// Removes closed segments past the age or size limit; the active one always stays.
    fn enforce_retention(&mut self, limits: &LocalLogLimits) -> Result<(), SinkError> {
        let now = SystemTime::now();
        let mut total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let modified = fs::metadata(&oldest.path).and_then(|m| m.modified()).unwrap_or(now);
            let expired = now.duration_since(modified).unwrap_or_default() > limits.retention;
            if !expired && total <= limits.max_bytes_per_tenant {
                break;
            }
            fs::remove_file(&oldest.path).map_err(io)?;
            total -= oldest.bytes;
            self.segments.remove(0);
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

impl LocalLog {
    pub fn open(dir: &Path, limits: LocalLogLimits) -> Result<LocalLog, SinkError> {
        fs::create_dir_all(dir).map_err(io)?;
        sync_dir(dir)?;
        Ok(LocalLog { dir: dir.to_path_buf(), limits, tenants: Arc::new(Mutex::new(Logs::default())) })
    }

    /// fsyncs of tenant files and directories since the log was opened.
    pub fn fsyncs(&self) -> u64 {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner()).fsyncs
    }

    fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.dir.join(tenant)
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

    /// Every raw line of a tenant's log, oldest first, for verification.
    pub fn for_each_raw(&self, tenant: &str, mut f: impl FnMut(&[u8])) -> Result<(), SinkError> {
        for segment in list_segments(&self.tenant_dir(tenant))? {
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            for line in BufReader::new(file).split(b'\n') {
                f(&line.map_err(io)?);
            }
        }
        Ok(())
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
        tokio::task::spawn_blocking(move || -> Result<Delivered, SinkError> {
            let mut tenants = tenants.lock().unwrap_or_else(|p| p.into_inner());
            let Logs { logs, open, clock, dirty, root_dirty, fsyncs } = &mut *tenants;
            for (tenant, lines) in by_tenant {
                *clock += 1;
                let log = match logs.entry(tenant.clone()) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let (log, created) = TenantLog::open(dir.join(v.key()))?;
                        *root_dirty |= created;
                        v.insert(log)
                    }
                };
                open.remove(&log.used);
                log.used = *clock;
                open.insert(*clock, tenant.clone());
                let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_ref()).collect();
                log.append(&lines, &limits, fsyncs)?;
                if log.dirty || log.dir_dirty {
                    dirty.insert(tenant);
                }
                while open.len() > MAX_OPEN_FILES {
                    let Some((_, oldest)) = open.pop_first() else { break };
                    if let Some(log) = logs.get_mut(&oldest) {
                        log.sync(fsyncs)?;
                        dirty.remove(&oldest);
                        log.file = None;
                    }
                }
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
            let Logs { logs, dirty, root_dirty, fsyncs, .. } = &mut *tenants;
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
