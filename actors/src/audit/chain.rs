//! Tamper evidence: the hash chain and its verifier.
//!
//! Every event belongs to one chain — a tenant's events from one node's outbox — and carries
//! its sequence number in that chain, the hash of the chain's previous event and its own hash.
//! The hash is SHA-256 over the event's canonical form: its JSON with `chainhash` removed,
//! object keys sorted, no whitespace. Changing any field of a stored event, adding one, or
//! dropping or moving an event shows up in [`Verifier::finish`].
//!
//! What a chain cannot show on its own is a cut-off tail: the last events of a chain missing
//! together look like a chain that ended early. An [`Anchor`] closes that gap: the head an
//! earlier verification (or the node's `chain_head`) reported must still be in the stream,
//! or be followed by the chain's first retained event.
//!
//! Retention removes a stream's oldest events. A stream the reader knows was cut that way
//! ([`Verifier::after_retention`]) lets a chain begin after seq 1 where retention could have
//! removed its start ([`Cut`]); only an anchor can then tell a removal by retention from one
//! by anyone else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::event::{rfc3339_ms, AuditEvent, AuditRecord, SCHEMA_VERSION, SPEC_VERSION, TYPE_PREFIX};

/// `chainprev` of a chain's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The bytes the chain hash covers.
/// Hex SHA-256 of the canonical form of any JSON event: what the verifier computes, over
/// every field present, known or not. `chainhash` is taken out for the hash and put back.
pub fn value_hash(value: &mut serde_json::Value) -> String {
    let stored = value.as_object_mut().and_then(|object| object.remove("chainhash"));
    // serde_json's map is a BTreeMap (no `preserve_order`): keys come out sorted.
    let hash = hex::encode(Sha256::digest(serde_json::to_vec(&*value).unwrap_or_default()));
    if let (Some(object), Some(stored)) = (value.as_object_mut(), stored) {
        object.insert("chainhash".into(), stored);
    }
    hash
}

/// Sets `chainhash` to the hash of the event's canonical form and returns the sealed event's
/// JSON. Serializing the struct with an empty `chainhash` yields the canonical form directly
/// (see [`AuditEvent`]); the stored JSON is that form with `"chainhash":"…",` put in its place
/// before `chainprev`, so the event is serialized once on the outbox writer's path.
pub fn seal(event: &mut AuditEvent) -> Result<Vec<u8>, serde_json::Error> {
    event.chainhash.clear();
    let canonical = serde_json::to_vec(&*event)?;
    event.chainhash = hex::encode(Sha256::digest(&canonical));
    // The fields before it are a number and the chain id (no quotes inside), so the first
    // occurrence is the key.
    const NEXT_KEY: &[u8] = b"\"chainprev\":";
    let Some(at) = canonical.windows(NEXT_KEY.len()).position(|w| w == NEXT_KEY) else {
        return serde_json::to_vec(&*event);
    };
    let mut json = Vec::with_capacity(canonical.len() + 80);
    json.extend_from_slice(&canonical[..at]);
    json.extend_from_slice(b"\"chainhash\":\"");
    json.extend_from_slice(event.chainhash.as_bytes());
    json.extend_from_slice(b"\",");
    json.extend_from_slice(&canonical[at..]);
    Ok(json)
}

/// Renders and seals the events of one outbox's chains straight to JSON, without building an
/// [`AuditEvent`]: [`Sealer::render`] writes everything that does not depend on the event's
/// place in its chain (the outbox calls it before taking its lock), [`Sealer::seal`] adds the
/// place and the hash. The bytes are exactly those [`seal`] gives for the same event — fields
/// in the sorted order of their names, `chainhash` before `chainprev`, the hash over the JSON
/// without it — and a test holds the two equal.
#[derive(Debug, Clone)]
pub struct Sealer {
    chain: String,
    /// `{"auditschema":N,"chain":"…",`
    head: Vec<u8>,
    /// `"source":"…","specversion":"…",`
    source: Vec<u8>,
}

/// An event rendered up to its place in a chain (see [`Sealer`]).
#[derive(Debug, Clone)]
pub struct Unplaced {
    /// `"data":{…},"datacontenttype":"application/json",`
    data: Vec<u8>,
    /// From `"source"` to the closing brace.
    rest: Vec<u8>,
}

/// A sealed event: its stored JSON, its hash and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub json: Vec<u8>,
    pub hash: [u8; 32],
    pub id: String,
}

/// `"chainhash":"` — what precedes the hash's hex digits in a sealed event.
const HASH_KEY: &[u8] = b"\"chainhash\":\"";

fn json_str(out: &mut Vec<u8>, value: &str) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, value)
}

impl Sealer {
    pub fn new(chain: &str, source: &str) -> Result<Sealer, serde_json::Error> {
        let mut head = format!("{{\"auditschema\":{SCHEMA_VERSION},\"chain\":").into_bytes();
        json_str(&mut head, chain)?;
        head.push(b',');
        let mut rendered = b"\"source\":".to_vec();
        json_str(&mut rendered, source)?;
        rendered.extend_from_slice(b",\"specversion\":");
        json_str(&mut rendered, SPEC_VERSION)?;
        rendered.push(b',');
        Ok(Sealer { chain: chain.to_string(), head, source: rendered })
    }

    /// The parts of `record`'s event that do not depend on its place in the chain, at
    /// `time_ms`.
    pub fn render(&self, record: &AuditRecord, time_ms: u64) -> Result<Unplaced, serde_json::Error> {
        let mut data = Vec::with_capacity(384);
        data.extend_from_slice(b"\"data\":");
        serde_json::to_writer(&mut data, &record.data)?;
        data.extend_from_slice(b",\"datacontenttype\":\"application/json\",");
        let mut rest = Vec::with_capacity(self.source.len() + 160);
        rest.extend_from_slice(&self.source);
        if let Some(subject) = &record.subject {
            rest.extend_from_slice(b"\"subject\":");
            json_str(&mut rest, subject)?;
            rest.push(b',');
        }
        rest.extend_from_slice(b"\"tenant\":");
        json_str(&mut rest, record.stream.as_str())?;
        rest.extend_from_slice(b",\"time\":");
        json_str(&mut rest, &rfc3339_ms(time_ms))?;
        rest.extend_from_slice(b",\"type\":\"");
        rest.extend_from_slice(TYPE_PREFIX.as_bytes());
        rest.extend_from_slice(record.kind.short().as_bytes());
        rest.extend_from_slice(b"\"}");
        Ok(Unplaced { data, rest })
    }

    /// Seals `event` as number `seq` of `tenant`'s chain, after the event whose hash is
    /// `prev` (none for the chain's first).
    pub fn seal(&self, event: &Unplaced, tenant: &str, seq: u64, prev: Option<&[u8; 32]>) -> Sealed {
        let id = format!("{tenant}.{}.{seq}", self.chain);
        let mut json =
            Vec::with_capacity(self.head.len() + HASH_KEY.len() + 220 + id.len() + event.data.len() + event.rest.len());
        json.extend_from_slice(&self.head);
        let hash_at = json.len() + HASH_KEY.len();
        json.extend_from_slice(HASH_KEY);
        json.extend_from_slice(&[b'0'; 64]);
        json.extend_from_slice(b"\",");
        let rest_at = json.len();
        json.extend_from_slice(b"\"chainprev\":\"");
        match prev {
            Some(prev) => {
                let at = json.len();
                json.resize(at + 64, 0);
                hex::encode_to_slice(prev, &mut json[at..]).expect("64 hex digits fit 64 bytes");
            }
            None => json.extend_from_slice(GENESIS.as_bytes()),
        }
        json.extend_from_slice(b"\",\"chainseq\":");
        // Writing to a Vec cannot fail.
        let _ = write!(json, "{seq}");
        json.push(b',');
        json.extend_from_slice(&event.data);
        json.extend_from_slice(b"\"id\":");
        // A string always serializes into a Vec.
        json_str(&mut json, &id).expect("writing a JSON string to memory");
        json.push(b',');
        json.extend_from_slice(&event.rest);
        let mut hasher = Sha256::new();
        hasher.update(&json[..hash_at - HASH_KEY.len()]);
        hasher.update(&json[rest_at..]);
        let hash: [u8; 32] = hasher.finalize().into();
        hex::encode_to_slice(hash, &mut json[hash_at..hash_at + 64]).expect("64 hex digits fit 64 bytes");
        Sealed { json, hash, id }
    }
}

/// Hex SHA-256 of the canonical form of a typed event (what [`seal`] would set).
pub fn event_hash(event: &AuditEvent) -> String {
    let mut sealed = event.clone();
    // A typed event always serializes; on the impossible error the hash stays empty.
    let _ = seal(&mut sealed);
    sealed.chainhash
}

/// Something the verifier found wrong with one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// The event's content does not match its own hash.
    Modified { chain: String, seq: u64, id: String },
    /// Events `from..=to` of the chain never appeared.
    Missing { chain: String, from: u64, to: u64 },
    /// The event came after a later event of its chain.
    Reordered { chain: String, seq: u64, after: u64 },
    /// The event's `chainprev` is not the hash of the chain's previous event.
    BrokenLink { chain: String, seq: u64 },
    /// Two different events claim the same place in the chain.
    Conflict { chain: String, seq: u64 },
    /// The event could not be read as an audit event at all.
    Unreadable { position: u64, reason: String },
    /// The event at an anchor's place, or the first retained one after it, does not match the
    /// anchor's hash: the chain was rewritten since the anchor was taken.
    AnchorMismatch { chain: String, seq: u64 },
    /// The stream starts after entry `first` although its retention keeps every entry: entries
    /// were removed.
    Truncated { first: u64 },
    /// A redelivery too far behind its original to compare at once, whose original the second
    /// read did not find (the stream no longer started where it did: retention removed events
    /// meanwhile), or that was never read again.
    Unverified { chain: String, seq: u64 },
}

/// Where retention may have cut a chain's start off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The stream holds its chains one after another (a node's local log): only the chain of
    /// its first retained entry.
    Sequential,
    /// Chains interleave (a Kafka partition holds every node's): any chain.
    Interleaved,
}

/// Where an earlier verification of a chain ended: its last seq and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anchor {
    pub chain: String,
    pub seq: u64,
    pub hash: String,
}

impl Anchor {
    /// Parses `CHAIN:SEQ:HASH` (as `custos audit verify` prints a chain's head).
    pub fn parse(text: &str) -> Result<Anchor, String> {
        let mut parts = text.rsplitn(3, ':');
        let (Some(hash), Some(seq), Some(chain)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("anchor {text:?} is not CHAIN:SEQ:HASH"));
        };
        let seq: u64 = seq.parse().map_err(|_| format!("anchor {text:?}: SEQ is not a number"))?;
        if seq == 0 || chain.is_empty() || decode_hash(hash).is_none() {
            return Err(format!("anchor {text:?}: needs a chain, a seq from 1 and a 64-digit hex hash"));
        }
        Ok(Anchor { chain: chain.to_string(), seq, hash: hash.to_ascii_lowercase() })
    }

    /// How `custos audit verify --anchor` takes it.
    pub fn render(&self) -> String {
        format!("{}:{}:{}", self.chain, self.seq, self.hash)
    }
}

/// One chain's extent in a verified stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    pub chain: String,
    pub events: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub tenant: String,
    /// Retention had removed the stream's oldest events: chains it may have cut were verified
    /// from their first retained event (and from their anchors).
    pub after_retention: bool,
    /// Events of the tenant read, duplicates included.
    pub events: u64,
    /// Redeliveries of an identical event (at-least-once shipping); not a finding.
    pub duplicates: u64,
    pub chains: Vec<ChainSummary>,
    /// At most [`Bounds::max_findings`]; `more_findings` counts the rest.
    pub findings: Vec<Finding>,
    pub more_findings: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty() && self.more_findings == 0
    }
}

/// What the [`Verifier`] keeps in memory, however long the stream.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Settled events whose hashes each chain keeps, to compare redeliveries with at once.
    pub window: usize,
    /// Events a chain keeps past a gap, waiting for the gap to fill; past that, the gap's
    /// first part is given up as missing.
    pub max_ahead: usize,
    /// Redeliveries too far behind to compare at once, compared on a second read; more are
    /// counted as unverified findings.
    pub max_late: usize,
    /// Findings a report lists; more are only counted.
    pub max_findings: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { window: 1 << 16, max_ahead: 1 << 16, max_late: 1 << 18, max_findings: 100_000 }
    }
}

const GENESIS_HASH: [u8; 32] = [0; 32];

struct Seen {
    hash: [u8; 32],
    prev: [u8; 32],
}

/// The listed findings and the count of those past their bound.
struct Findings {
    bound: usize,
    listed: Vec<Finding>,
    more: u64,
}

impl Findings {
    fn new(bound: usize) -> Findings {
        Findings { bound, listed: Vec::new(), more: 0 }
    }

    fn push(&mut self, finding: Finding) {
        if self.listed.len() < self.bound {
            self.listed.push(finding);
        } else {
            self.more += 1;
        }
    }
}

/// One chain as read so far. Every seq below `next` is settled — seen, with its link to the
/// one before checked, or given up as missing — and only the last `window` of their hashes
/// are kept; seen events above a gap wait in `ahead`.
struct ChainState {
    bounds: Bounds,
    next: u64,
    /// Hash of the settled event `next - 1`, when it was seen.
    head: Option<[u8; 32]>,
    /// Hashes of the settled seqs just below `next`, oldest first; `None` for a missing one.
    recent: VecDeque<Option<[u8; 32]>>,
    ahead: BTreeMap<u64, Seen>,
    /// Ranges given up as missing, in order (at most `max_findings`).
    gaps: Vec<(u64, u64)>,
    /// Missing ranges and broken links, in seq order: reported at the end, when a missing
    /// start of a chain retention may have cut is left out.
    findings: Findings,
    /// Lowest and highest seq seen, and the hash of the highest when it came.
    first: Option<u64>,
    max_seq: u64,
    last_hash_hex: String,
    /// Distinct seqs seen.
    distinct: u64,
}

impl ChainState {
    fn new(bounds: Bounds) -> Self {
        ChainState {
            bounds,
            next: 1,
            head: None,
            recent: VecDeque::new(),
            ahead: BTreeMap::new(),
            gaps: Vec::new(),
            findings: Findings::new(bounds.max_findings),
            first: None,
            max_seq: 0,
            last_hash_hex: String::new(),
            distinct: 0,
        }
    }
}

/// What an earlier sighting says about a seq already settled.
enum Earlier {
    /// Seen, with this hash.
    Seen([u8; 32]),
    /// Given up as missing.
    Missing,
    /// Settled too long ago to remember.
    Forgotten,
}

impl ChainState {
    fn earlier(&self, seq: u64) -> Earlier {
        let window_start = self.next - self.recent.len() as u64;
        if seq >= window_start {
            return match self.recent[(seq - window_start) as usize] {
                Some(hash) => Earlier::Seen(hash),
                None => Earlier::Missing,
            };
        }
        let after = self.gaps.partition_point(|&(from, _)| from <= seq);
        match after.checked_sub(1).map(|i| self.gaps[i]) {
            Some((_, to)) if seq <= to => Earlier::Missing,
            _ => Earlier::Forgotten,
        }
    }

    fn remember(&mut self, hash: Option<[u8; 32]>) {
        if self.recent.len() >= self.bounds.window {
            self.recent.pop_front();
        }
        self.recent.push_back(hash);
    }

    /// Settles what `ahead` holds from `next` on; with `force` (the stream has ended) or with
    /// `ahead` past its bound, a gap before the lowest held seq is given up as missing.
    fn settle(&mut self, chain: &str, force: bool) {
        while let Some(&seq) = self.ahead.keys().next() {
            if seq != self.next {
                if !force && self.ahead.len() <= self.bounds.max_ahead {
                    return;
                }
                let (from, to) = (self.next, seq - 1);
                self.findings.push(Finding::Missing { chain: chain.to_string(), from, to });
                if self.gaps.len() < self.bounds.max_findings {
                    self.gaps.push((from, to));
                }
                if to - from + 1 >= self.bounds.window as u64 {
                    self.recent.clear();
                } else {
                    (from..=to).for_each(|_| self.remember(None));
                }
                self.head = None;
                self.next = seq;
            }
            let seen = self.ahead.remove(&seq).expect("the lowest key is held");
            let link_ok = match self.head {
                Some(head) => seen.prev == head,
                None if seq == 1 => seen.prev == GENESIS_HASH,
                // The one before is missing (reported): nothing to compare with.
                None => true,
            };
            if !link_ok {
                self.findings.push(Finding::BrokenLink { chain: chain.to_string(), seq });
            }
            self.remember(Some(seen.hash));
            self.head = Some(seen.hash);
            self.next = seq + 1;
        }
    }
}

/// What an anchor's chain showed at the anchor's place: the hash of the event there and the
/// `chainprev` of the one after.
#[derive(Default)]
struct AnchorSeen {
    hash: Option<[u8; 32]>,
    prev_after: Option<[u8; 32]>,
}

/// A place in a chain: (chain, seq).
type Place = (String, u64);

/// A redelivery whose original was settled too long ago to compare at once.
struct Late {
    chain: String,
    seq: u64,
    hash: [u8; 32],
    intact: bool,
}

/// Reads one tenant's events in stream order and reports what is wrong with its chains.
///
/// Memory is bounded ([`Bounds`]): per chain, the hashes of the last `window` settled events
/// and at most `max_ahead` events past a gap; at most `max_late` redeliveries too far behind
/// their originals to compare at once. When there were any ([`Verifier::needs_rereading`]),
/// the stream is read once more after [`Verifier::reread`] to find their originals. The
/// findings are those of keeping every event, except for an event that comes more than
/// `max_ahead` events late: it is reported as reordered, and its place as missing too.
pub struct Verifier {
    bounds: Bounds,
    tenant: String,
    cut: Option<Cut>,
    anchors: Vec<(Anchor, AnchorSeen)>,
    position: u64,
    events: u64,
    duplicates: u64,
    chains: HashMap<String, ChainState>,
    findings: Findings,
    late: Vec<Late>,
    /// Late redeliveries past `max_late`: never compared.
    late_dropped: u64,
    /// On the second read: the first hash seen at each late redelivery's place.
    originals: Option<HashMap<Place, Option<[u8; 32]>>>,
    /// The tenant's first event on the first read (chain, seq, hash): its chain is the one
    /// retention may have cut in a sequential stream, and the second read finds originals only
    /// if it starts there too.
    first_event: Option<(String, u64, String)>,
    /// Whether the second read started elsewhere (known from its first event of the tenant).
    front_moved: Option<bool>,
}

fn decode_hash(hex_text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_text).ok()?;
    bytes.try_into().ok()
}

impl Verifier {
    pub fn new(tenant: impl Into<String>) -> Verifier {
        Verifier::with_bounds(tenant, Bounds::default())
    }

    pub fn with_bounds(tenant: impl Into<String>, bounds: Bounds) -> Verifier {
        Verifier {
            bounds,
            tenant: tenant.into(),
            cut: None,
            anchors: Vec::new(),
            position: 0,
            events: 0,
            duplicates: 0,
            chains: HashMap::new(),
            findings: Findings::new(bounds.max_findings),
            late: Vec::new(),
            late_dropped: 0,
            originals: None,
            first_event: None,
            front_moved: None,
        }
    }

    /// The stream's oldest events were removed by retention (its reader saw the log or the
    /// partition start after its first entry): a chain `cut` names may begin after seq 1.
    pub fn after_retention(&mut self, cut: Cut) {
        self.cut = Some(cut);
    }

    /// The stream starts after entry `first` though nothing should have removed any: a finding.
    pub fn truncated(&mut self, first: u64) {
        self.findings.push(Finding::Truncated { first });
    }

    /// Whether retention may have removed the start of `chain`.
    fn may_be_cut(&self, chain: &str) -> bool {
        match self.cut {
            None => false,
            Some(Cut::Interleaved) => true,
            Some(Cut::Sequential) => self.first_event.as_ref().is_some_and(|(first, ..)| first == chain),
        }
    }

    /// Requires a chain to hold, or to continue from, a head seen before.
    pub fn anchor(&mut self, anchor: Anchor) {
        self.anchors.push((anchor, AnchorSeen::default()));
    }

    /// Whether the stream must be read again (see the type's docs).
    pub fn needs_rereading(&self) -> bool {
        !self.late.is_empty() && self.originals.is_none()
    }

    /// Starts the second read: every entry of the stream is pushed again, from the start.
    pub fn reread(&mut self) {
        let places = self.late.iter().map(|late| ((late.chain.clone(), late.seq), None));
        self.originals = Some(places.collect());
    }

    /// Feeds one raw stream entry; entries of other tenants are skipped. The hash is computed
    /// over the entry as stored, so a field the event type does not know still counts.
    pub fn push_raw(&mut self, bytes: &[u8]) {
        let parsed = serde_json::from_slice::<serde_json::Value>(bytes).and_then(|mut value| {
            let computed = value_hash(&mut value);
            serde_json::from_value::<AuditEvent>(value).map(|event| (event, computed))
        });
        if self.originals.is_some() {
            // Read exactly as the first time, so the second read sees the very events the
            // first did, and the first one at a place is the original the first read settled.
            if let Ok((event, _)) = parsed {
                self.recall(&event);
            }
            return;
        }
        self.position += 1;
        match parsed {
            Ok((event, computed)) => self.check(event, computed),
            Err(error) => {
                // An unreadable entry may have been any tenant's; it is only reported when it
                // at least names this tenant, so one tenant's verification never depends on
                // the content of another's events.
                let names_tenant = serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .and_then(|v| v.get("tenant").and_then(|t| t.as_str()).map(|t| t == self.tenant))
                    .unwrap_or(false);
                if names_tenant {
                    self.findings.push(Finding::Unreadable { position: self.position, reason: error.to_string() });
                }
            }
        }
    }

    /// Feeds one parsed event; events of other tenants are skipped.
    pub fn push(&mut self, event: AuditEvent) {
        if self.originals.is_some() {
            self.recall(&event);
            return;
        }
        self.position += 1;
        let computed = event_hash(&event);
        self.check(event, computed);
    }

    /// On the second read: keeps the first hash seen at a late redelivery's place. The first
    /// one seen there is the original only if the stream still starts where it did (retention
    /// may have removed the original meanwhile, and the redelivery would stand in for it).
    fn recall(&mut self, event: &AuditEvent) {
        if event.tenant != self.tenant {
            return;
        }
        let first = &self.first_event;
        let moved = *self.front_moved.get_or_insert_with(|| {
            first.as_ref().is_none_or(|(chain, seq, hash)| {
                (chain, *seq, hash) != (&event.chain, event.chainseq, &event.chainhash)
            })
        });
        if moved {
            return;
        }
        let originals = self.originals.as_mut().expect("called on the second read");
        if let Some(original @ None) = originals.get_mut(&(event.chain.clone(), event.chainseq)) {
            *original = decode_hash(&event.chainhash);
        }
    }

    fn check(&mut self, event: AuditEvent, computed: String) {
        if event.tenant != self.tenant {
            return;
        }
        self.events += 1;
        if self.first_event.is_none() {
            self.first_event = Some((event.chain.clone(), event.chainseq, event.chainhash.clone()));
        }
        let intact = computed == event.chainhash;
        if !intact {
            self.findings.push(Finding::Modified {
                chain: event.chain.clone(),
                seq: event.chainseq,
                id: event.id.clone(),
            });
        }
        let (Some(hash), Some(prev), 1..) =
            (decode_hash(&event.chainhash), decode_hash(&event.chainprev), event.chainseq)
        else {
            self.findings.push(Finding::BrokenLink { chain: event.chain.clone(), seq: event.chainseq });
            return;
        };
        let seq = event.chainseq;
        let bounds = self.bounds;
        let state = self.chains.entry(event.chain.clone()).or_insert_with(|| ChainState::new(bounds));
        let earlier = match state.ahead.get(&seq) {
            Some(seen) => Some(Earlier::Seen(seen.hash)),
            None if seq < state.next => Some(state.earlier(seq)),
            None => None,
        };
        match earlier {
            Some(Earlier::Seen(earlier)) => {
                if earlier == hash && intact {
                    self.duplicates += 1;
                } else {
                    self.findings.push(Finding::Conflict { chain: event.chain, seq });
                }
                return;
            }
            Some(Earlier::Forgotten) => {
                if self.late.len() < self.bounds.max_late {
                    self.late.push(Late { chain: event.chain, seq, hash, intact });
                } else {
                    self.late_dropped += 1;
                }
                return;
            }
            // A place given up as missing: the event comes late (below), and stays reported
            // as missing.
            Some(Earlier::Missing) | None => {}
        }
        state.distinct += 1;
        state.first = Some(state.first.map_or(seq, |first| first.min(seq)));
        if seq < state.max_seq {
            self.findings.push(Finding::Reordered { chain: event.chain.clone(), seq, after: state.max_seq });
        } else {
            state.max_seq = seq;
            state.last_hash_hex = event.chainhash.clone();
        }
        for (anchor, seen) in self.anchors.iter_mut().filter(|(anchor, _)| anchor.chain == event.chain) {
            if seq == anchor.seq {
                seen.hash = Some(hash);
            } else if seq == anchor.seq + 1 {
                seen.prev_after = Some(prev);
            }
        }
        if seq >= state.next {
            state.ahead.insert(seq, Seen { hash, prev });
            state.settle(&event.chain, false);
        }
    }

    /// Settles every chain once the whole stream has been read (twice when it needed
    /// rereading) and reports.
    pub fn finish(mut self) -> Report {
        let mut findings = std::mem::replace(&mut self.findings, Findings::new(0));
        let originals = self.originals.take().unwrap_or_default();
        for late in std::mem::take(&mut self.late) {
            match originals.get(&(late.chain.clone(), late.seq)).copied().flatten() {
                Some(original) if original == late.hash && late.intact => self.duplicates += 1,
                Some(_) => findings.push(Finding::Conflict { chain: late.chain, seq: late.seq }),
                None => findings.push(Finding::Unverified { chain: late.chain, seq: late.seq }),
            }
        }
        findings.more += self.late_dropped;
        for (name, state) in self.chains.iter_mut() {
            state.settle(name, true);
        }
        let empty = ChainState::new(self.bounds);
        for (anchor, seen) in &self.anchors {
            let cut = self.may_be_cut(&anchor.chain);
            let state = self.chains.get(&anchor.chain).unwrap_or(&empty);
            let hash = decode_hash(&anchor.hash);
            let chain = anchor.chain.clone();
            if let Some(at) = seen.hash {
                if Some(at) != hash {
                    findings.push(Finding::AnchorMismatch { chain, seq: anchor.seq });
                }
            } else if state.first == Some(anchor.seq + 1) {
                if seen.prev_after != hash {
                    findings.push(Finding::AnchorMismatch { chain, seq: anchor.seq });
                }
            } else if let Some(first) = state.first.filter(|&first| first > anchor.seq + 1 && cut) {
                // Events after the anchor, never verified, are gone.
                findings.push(Finding::Missing { chain, from: anchor.seq + 1, to: first - 1 });
            } else if state.max_seq < anchor.seq && (state.first.is_some() || self.cut.is_none()) {
                // The chain's tail up to the anchor was cut off. (A chain retention removed
                // entirely leaves nothing to compare.)
                findings.push(Finding::Missing { chain, from: state.max_seq + 1, to: anchor.seq });
            }
        }
        let mut names: Vec<String> = self.chains.keys().cloned().collect();
        names.sort();
        let mut chains = Vec::with_capacity(names.len());
        for name in names {
            let cut = self.may_be_cut(&name);
            let state = self.chains.remove(&name).expect("a listed chain");
            for finding in state.findings.listed {
                // A chain retention may have cut is checked from its first retained event;
                // gaps after an anchor were reported above.
                let cut_start =
                    matches!(finding, Finding::Missing { from: 1, to, .. } if cut && Some(to + 1) == state.first);
                if !cut_start {
                    findings.push(finding);
                }
            }
            findings.more += state.findings.more;
            chains.push(ChainSummary {
                chain: name,
                events: state.distinct,
                first_seq: state.first.unwrap_or(0),
                last_seq: state.max_seq,
                last_hash: state.last_hash_hex,
            });
        }
        Report {
            tenant: self.tenant,
            after_retention: self.cut.is_some(),
            events: self.events,
            duplicates: self.duplicates,
            chains,
            findings: findings.listed,
            more_findings: findings.more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Actor, AuditData, Outcome, SCHEMA_VERSION, SPEC_VERSION};

    fn chain_of(tenant: &str, chain: &str, n: u64) -> Vec<AuditEvent> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut event = AuditEvent {
                    specversion: SPEC_VERSION.into(),
                    id: format!("{chain}-{seq}"),
                    source: "custos://node/1".into(),
                    kind: "dev.custos.key.encrypt".into(),
                    time: "2026-11-23T10:00:00.000Z".into(),
                    subject: Some("keys/k".into()),
                    datacontenttype: "application/json".into(),
                    tenant: tenant.into(),
                    auditschema: SCHEMA_VERSION,
                    chain: chain.into(),
                    chainseq: seq,
                    chainprev: prev.clone(),
                    chainhash: String::new(),
                    data: AuditData::new(Actor::admin(), Outcome::Success),
                };
                event.chainhash = event_hash(&event);
                prev = event.chainhash.clone();
                event
            })
            .collect()
    }

    fn verify(tenant: &str, events: &[AuditEvent]) -> Report {
        let mut verifier = Verifier::new(tenant);
        for event in events {
            verifier.push_raw(&serde_json::to_vec(event).unwrap());
        }
        verifier.finish()
    }

    #[test]
    fn an_intact_chain_verifies_and_duplicates_are_not_findings() {
        let mut events = chain_of("acme", "1/a", 5);
        events.insert(3, events[2].clone());
        let report = verify("acme", &events);
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!((report.events, report.duplicates), (6, 1));
        assert_eq!(report.chains[0].last_seq, 5);
        assert_eq!(report.chains[0].last_hash, events[5].chainhash);
    }

    #[test]
    fn a_modified_event_is_found_and_recomputing_its_hash_breaks_the_next_link() {
        let mut events = chain_of("acme", "1/a", 4);
        events[1].data.outcome = Outcome::Denied;
        let report = verify("acme", &events);
        assert_eq!(report.findings, vec![Finding::Modified { chain: "1/a".into(), seq: 2, id: "1/a-2".into() }]);

        events[1].chainhash = event_hash(&events[1]);
        let report = verify("acme", &events);
        assert_eq!(report.findings, vec![Finding::BrokenLink { chain: "1/a".into(), seq: 3 }]);
    }

    #[test]
    fn a_dropped_event_is_a_gap() {
        let mut events = chain_of("acme", "1/a", 5);
        events.remove(2);
        let report = verify("acme", &events);
        assert_eq!(report.findings, vec![Finding::Missing { chain: "1/a".into(), from: 3, to: 3 }]);
        let first_dropped = verify("acme", &chain_of("acme", "1/a", 3)[1..]);
        assert_eq!(first_dropped.findings, vec![Finding::Missing { chain: "1/a".into(), from: 1, to: 1 }]);
    }

    fn verify_with(events: &[AuditEvent], cut: Option<Cut>, anchors: &[Anchor]) -> Vec<Finding> {
        let mut verifier = Verifier::new("acme");
        if let Some(cut) = cut {
            verifier.after_retention(cut);
        }
        for anchor in anchors {
            verifier.anchor(anchor.clone());
        }
        for event in events {
            verifier.push_raw(&serde_json::to_vec(event).unwrap());
        }
        let report = verifier.finish();
        assert_eq!(report.after_retention, cut.is_some());
        report.findings
    }

    fn anchor_at(events: &[AuditEvent], seq: u64) -> Anchor {
        let event = &events[seq as usize - 1];
        Anchor { chain: event.chain.clone(), seq, hash: event.chainhash.clone() }
    }

    #[test]
    fn after_retention_a_chain_is_checked_from_its_first_retained_event() {
        let events = chain_of("acme", "1/a", 10);
        let retained = &events[4..];
        assert_eq!(verify_with(retained, None, &[]), vec![Finding::Missing { chain: "1/a".into(), from: 1, to: 4 }]);
        assert_eq!(verify_with(retained, Some(Cut::Sequential), &[]), vec![]);
        // A gap inside what is retained is still one.
        let mut holed = retained.to_vec();
        holed.remove(2);
        assert_eq!(
            verify_with(&holed, Some(Cut::Sequential), &[]),
            vec![Finding::Missing { chain: "1/a".into(), from: 7, to: 7 }]
        );

        // A second chain that begins later without its first events: in a log holding its
        // chains one after another retention cannot have taken them; in a partition where
        // chains interleave it may have.
        let later = chain_of("acme", "1/b", 4);
        let stream: Vec<AuditEvent> = retained.iter().chain(&later[2..]).cloned().collect();
        assert_eq!(
            verify_with(&stream, Some(Cut::Sequential), &[]),
            vec![Finding::Missing { chain: "1/b".into(), from: 1, to: 2 }]
        );
        assert_eq!(verify_with(&stream, Some(Cut::Interleaved), &[]), vec![]);
    }

    #[test]
    fn a_stream_cut_although_nothing_expires_is_a_finding() {
        let mut verifier = Verifier::new("acme");
        verifier.truncated(7);
        for event in &chain_of("acme", "1/a", 3) {
            verifier.push(event.clone());
        }
        assert_eq!(verifier.finish().findings, vec![Finding::Truncated { first: 7 }]);
    }

    #[test]
    fn an_anchor_finds_a_cut_tail_a_rewritten_chain_and_unverified_events_removed_after_it() {
        let events = chain_of("acme", "1/a", 10);
        let head = anchor_at(&events, 10);
        assert_eq!(verify_with(&events, None, std::slice::from_ref(&head)), vec![]);
        // The last three events dropped: without the anchor the chain just looks shorter.
        assert_eq!(verify_with(&events[..7], None, &[]), vec![]);
        assert_eq!(
            verify_with(&events[..7], None, std::slice::from_ref(&head)),
            vec![Finding::Missing { chain: "1/a".into(), from: 8, to: 10 }]
        );
        // A chain built again from scratch (same ids, other content) does not hold the anchor.
        let mut forged = chain_of("acme", "1/a", 10);
        for event in &mut forged {
            event.subject = Some("keys/other".into());
        }
        let forged: Vec<AuditEvent> = {
            let mut prev = GENESIS.to_string();
            forged
                .into_iter()
                .map(|mut event| {
                    event.chainprev = prev.clone();
                    event.chainhash = event_hash(&event);
                    prev = event.chainhash.clone();
                    event
                })
                .collect()
        };
        assert_eq!(verify_with(&forged, None, &[]), vec![]);
        assert_eq!(
            verify_with(&forged, None, std::slice::from_ref(&head)),
            vec![Finding::AnchorMismatch { chain: "1/a".into(), seq: 10 }]
        );
        // After retention: an anchor just before the first retained event links to it; one
        // further back means events after it went before anyone verified them.
        let retained = &events[5..];
        assert_eq!(verify_with(retained, Some(Cut::Sequential), &[anchor_at(&events, 5)]), vec![]);
        assert_eq!(verify_with(retained, Some(Cut::Sequential), &[anchor_at(&events, 8)]), vec![]);
        assert_eq!(
            verify_with(retained, Some(Cut::Sequential), &[anchor_at(&events, 3)]),
            vec![Finding::Missing { chain: "1/a".into(), from: 4, to: 5 }]
        );
        let wrong = Anchor { hash: events[1].chainhash.clone(), ..anchor_at(&events, 5) };
        assert_eq!(
            verify_with(retained, Some(Cut::Sequential), &[wrong]),
            vec![Finding::AnchorMismatch { chain: "1/a".into(), seq: 5 }]
        );
        // A chain the stream lacks: cut off, unless retention may have removed all of it.
        let other = Anchor { chain: "2/b".into(), ..anchor_at(&events, 4) };
        assert_eq!(
            verify_with(&events, None, std::slice::from_ref(&other)),
            vec![Finding::Missing { chain: "2/b".into(), from: 1, to: 4 }]
        );
        assert_eq!(verify_with(retained, Some(Cut::Sequential), &[other]), vec![]);
    }

    #[test]
    fn anchors_parse_as_verify_prints_them() {
        let hash = "ab".repeat(32);
        let anchor = Anchor::parse(&format!("node-1.7f3a:42:{hash}")).unwrap();
        assert_eq!(anchor, Anchor { chain: "node-1.7f3a".into(), seq: 42, hash: hash.clone() });
        assert_eq!(Anchor::parse(&anchor.render()).unwrap(), anchor);
        for bad in ["", "c:1", &format!("c:x:{hash}"), &format!("c:0:{hash}"), "c:1:abc", &format!(":1:{hash}")] {
            assert!(Anchor::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_reordered_event_is_found_and_not_taken_for_a_gap() {
        let mut events = chain_of("acme", "1/a", 5);
        events.swap(1, 3);
        let report = verify("acme", &events);
        assert_eq!(
            report.findings,
            vec![
                Finding::Reordered { chain: "1/a".into(), seq: 3, after: 4 },
                Finding::Reordered { chain: "1/a".into(), seq: 2, after: 4 },
            ]
        );
    }

    #[test]
    fn chains_interleave_and_other_tenants_are_ignored() {
        let a = chain_of("acme", "1/a", 3);
        let b = chain_of("acme", "2/b", 3);
        let other = chain_of("globex", "1/a", 3);
        let mixed: Vec<AuditEvent> = (0..3).flat_map(|i| [a[i].clone(), other[i].clone(), b[i].clone()]).collect();
        let report = verify("acme", &mixed);
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!(report.events, 6);
        assert_eq!(report.chains.len(), 2);
    }

    #[test]
    fn sealing_the_typed_event_gives_the_hash_of_its_canonical_form() {
        let mut event = chain_of("acme", "1/a", 1).remove(0);
        for variant in 0..4 {
            if variant >= 1 {
                event.subject = None;
                event.data.key_version = Some(7);
            }
            if variant >= 2 {
                // Inserted out of order: the map must still come out sorted.
                event.data.details.insert("zeta".into(), serde_json::json!(1));
                event.data.details.insert("alpha".into(), serde_json::json!({"b": 1, "a": [2]}));
            }
            if variant >= 3 {
                event.data.actor.idp = Some("keycloak".into());
                event.data.reason = Some("decryption_failed".into());
            }
            let json = seal(&mut event).unwrap();
            assert_eq!(json, serde_json::to_vec(&event).unwrap(), "variant {variant}: the sealed JSON is the event's");
            let mut stored = serde_json::to_value(&event).unwrap();
            assert_eq!(event.chainhash, value_hash(&mut stored), "variant {variant}");
            assert_eq!(stored["chainhash"], event.chainhash.as_str(), "the stored hash is put back");
        }
    }

    #[test]
    fn the_sealer_writes_exactly_what_sealing_the_typed_event_writes() {
        use crate::audit::event::{AuditStream, EventType};
        let sealer = Sealer::new("node-1.ab\"c", "custos://node/1").unwrap();
        let tenant = |id: &str| AuditStream::Tenant(custos_raft::TenantId::new(id).unwrap());
        let mut record = AuditRecord {
            stream: tenant("acme"),
            kind: EventType::KeyEncrypt,
            subject: Some("keys/k".into()),
            data: AuditData::new(Actor::admin(), Outcome::Success),
        };
        let mut prev = None;
        for variant in 0..5u64 {
            match variant {
                1 => {
                    record.subject = None;
                    record.data.key_version = Some(7);
                    record.stream = AuditStream::Cluster;
                }
                2 => {
                    record.data.details.insert("zeta".into(), serde_json::json!(1));
                    record.data.details.insert("alpha".into(), serde_json::json!({"b": "\u{1}\\", "a": [2]}));
                }
                3 => {
                    record.subject = Some("keys/\"quoted\" \u{e9}\n".into());
                    record.data.actor.idp = Some("keycloak".into());
                    record.data.reason = Some("decryption_failed".into());
                    record.kind = EventType::DirectoryGroupDelete;
                }
                4 => record.stream = tenant("b-2"),
                _ => {}
            }
            let time_ms = 1_700_000_000_123 + variant;
            let seq = variant * 1000 + 1;
            let sealed =
                sealer.seal(&sealer.render(&record, time_ms).unwrap(), record.stream.as_str(), seq, prev.as_ref());
            let mut event = AuditEvent {
                auditschema: SCHEMA_VERSION,
                chain: "node-1.ab\"c".into(),
                chainhash: String::new(),
                chainprev: prev.map_or(GENESIS.to_string(), hex::encode),
                chainseq: seq,
                data: record.data.clone(),
                datacontenttype: "application/json".into(),
                id: format!("{}.node-1.ab\"c.{seq}", record.stream.as_str()),
                source: "custos://node/1".into(),
                specversion: SPEC_VERSION.into(),
                subject: record.subject.clone(),
                tenant: record.stream.as_str().into(),
                time: crate::audit::event::rfc3339_ms(time_ms),
                kind: record.kind.full(),
            };
            let json = seal(&mut event).unwrap();
            assert_eq!(String::from_utf8(sealed.json).unwrap(), String::from_utf8(json).unwrap(), "variant {variant}");
            assert_eq!(hex::encode(sealed.hash), event.chainhash, "variant {variant}");
            assert_eq!(sealed.id, event.id, "variant {variant}");
            prev = Some(sealed.hash);
        }
    }

    #[test]
    fn a_field_added_anywhere_is_a_modification() {
        let events = chain_of("acme", "1/a", 1);
        let mut value = serde_json::to_value(&events[0]).unwrap();
        value["data"]["approved_by"] = serde_json::json!("nobody");
        let mut verifier = Verifier::new("acme");
        verifier.push_raw(&serde_json::to_vec(&value).unwrap());
        assert!(matches!(verifier.finish().findings[..], [Finding::Modified { seq: 1, .. }]));
    }

    #[test]
    fn a_forged_event_in_an_existing_place_is_a_conflict() {
        let mut events = chain_of("acme", "1/a", 3);
        let mut forged = events[1].clone();
        forged.subject = Some("keys/other".into());
        forged.chainhash = event_hash(&forged);
        events.push(forged);
        let report = verify("acme", &events);
        assert_eq!(report.findings, vec![Finding::Conflict { chain: "1/a".into(), seq: 2 }]);
    }

    #[test]
    fn an_added_field_is_a_modification_and_garbage_naming_the_tenant_is_unreadable() {
        let events = chain_of("acme", "1/a", 2);
        let mut value = serde_json::to_value(&events[0]).unwrap();
        value["data"]["details"] = serde_json::json!({"note": "added later"});
        let mut verifier = Verifier::new("acme");
        verifier.push_raw(&serde_json::to_vec(&value).unwrap());
        verifier.push_raw(&serde_json::to_vec(&events[1]).unwrap());
        verifier.push_raw(br#"{"tenant":"acme","id":7}"#);
        verifier.push_raw(br#"{"tenant":"globex","id":7}"#);
        let report = verifier.finish();
        assert!(matches!(report.findings[0], Finding::Modified { seq: 1, .. }), "{:?}", report.findings);
        assert!(matches!(report.findings[1], Finding::Unreadable { position: 3, .. }), "{:?}", report.findings);
        assert_eq!(report.findings.len(), 2);
    }

    fn small() -> Bounds {
        Bounds { window: 4, max_ahead: 4, max_late: 2, max_findings: 3 }
    }

    fn read(verifier: &mut Verifier, events: &[AuditEvent]) {
        for event in events {
            verifier.push_raw(&serde_json::to_vec(event).unwrap());
        }
    }

    /// Hashes and events a verifier holds in memory.
    fn held(verifier: &Verifier) -> usize {
        verifier.chains.values().map(|c| c.recent.len() + c.ahead.len() + c.gaps.len()).sum::<usize>()
            + verifier.late.len()
    }

    #[test]
    fn a_long_stream_is_held_within_the_bounds() {
        let events = chain_of("acme", "1/a", 200);
        let mut verifier = Verifier::with_bounds("acme", small());
        for event in &events {
            verifier.push_raw(&serde_json::to_vec(event).unwrap());
            assert!(held(&verifier) <= 4, "{} held", held(&verifier));
        }
        let report = verifier.finish();
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!((report.events, report.chains[0].first_seq, report.chains[0].last_seq), (200, 1, 200));
        assert_eq!(report.chains[0].last_hash, events[199].chainhash);

        // A cut chain longer than the events held past a gap: its start is given up as missing
        // while reading, and left out in the end because retention may have cut it.
        let retained = &events[9..];
        assert_eq!(verify_with(retained, Some(Cut::Sequential), &[]), vec![]);
        assert_eq!(verify_with(retained, None, &[]), vec![Finding::Missing { chain: "1/a".into(), from: 1, to: 9 }]);
        let mut verifier = Verifier::with_bounds("acme", small());
        verifier.after_retention(Cut::Sequential);
        read(&mut verifier, retained);
        assert!(held(&verifier) <= 4 + 1, "{} held", held(&verifier));
        assert!(verifier.finish().is_clean());
    }

    #[test]
    fn a_redelivery_far_behind_its_original_is_compared_on_a_second_read() {
        let events = chain_of("acme", "1/a", 20);
        let mut forged = events[4].clone();
        forged.subject = Some("keys/other".into());
        forged.chainhash = event_hash(&forged);
        // Seq 3 comes again, identical, and a forged seq 5, both long after the window moved on.
        let stream: Vec<AuditEvent> = events.iter().cloned().chain([events[2].clone(), forged]).collect();

        let mut verifier = Verifier::with_bounds("acme", small());
        read(&mut verifier, &stream);
        assert!(verifier.needs_rereading());
        verifier.reread();
        assert!(!verifier.needs_rereading());
        read(&mut verifier, &stream);
        let report = verifier.finish();
        assert_eq!(report.findings, vec![Finding::Conflict { chain: "1/a".into(), seq: 5 }]);
        assert_eq!((report.events, report.duplicates), (22, 1));

        // Without the second read, or with the originals gone from it, neither is taken for
        // verified.
        let unverified = vec![
            Finding::Unverified { chain: "1/a".into(), seq: 3 },
            Finding::Unverified { chain: "1/a".into(), seq: 5 },
        ];
        let mut verifier = Verifier::with_bounds("acme", small());
        read(&mut verifier, &stream);
        assert_eq!(verifier.finish().findings, unverified);
        let mut verifier = Verifier::with_bounds("acme", small());
        read(&mut verifier, &stream);
        verifier.reread();
        read(&mut verifier, &stream[10..]);
        assert_eq!(verifier.finish().findings, unverified);

        // The same stream with the default bounds compares both at once.
        let mut verifier = Verifier::new("acme");
        read(&mut verifier, &stream);
        assert!(!verifier.needs_rereading());
        assert_eq!(verifier.finish().findings, vec![Finding::Conflict { chain: "1/a".into(), seq: 5 }]);
    }

    #[test]
    fn the_second_read_takes_each_entry_as_the_first_did() {
        // The original at seq 5 repeats a key: a JSON object reads it with the last value, as
        // the first read does, while a direct read into the event type refuses it. A forged
        // event at its place, far later, must still be compared with it.
        let events = chain_of("acme", "1/a", 20);
        let mut lines: Vec<Vec<u8>> = events.iter().map(|e| serde_json::to_vec(e).unwrap()).collect();
        let original = String::from_utf8(lines[4].clone()).unwrap();
        lines[4] = original.replacen("\"chainseq\":5", "\"chainseq\":5,\"chainseq\":5", 1).into_bytes();
        assert_ne!(lines[4], original.as_bytes());
        let mut forged = events[4].clone();
        forged.subject = Some("keys/other".into());
        forged.chainhash = event_hash(&forged);
        lines.push(serde_json::to_vec(&forged).unwrap());

        let mut verifier = Verifier::with_bounds("acme", small());
        let read = |verifier: &mut Verifier| lines.iter().for_each(|line| verifier.push_raw(line));
        read(&mut verifier);
        verifier.reread();
        read(&mut verifier);
        assert_eq!(verifier.finish().findings, vec![Finding::Conflict { chain: "1/a".into(), seq: 5 }]);
    }

    #[test]
    fn an_event_later_than_the_bound_is_reordered_and_its_place_missing() {
        let events = chain_of("acme", "1/a", 10);
        let mut stream = events.clone();
        let late = stream.remove(1);
        stream.push(late);
        let mut verifier = Verifier::with_bounds("acme", small());
        read(&mut verifier, &stream);
        assert_eq!(
            verifier.finish().findings,
            vec![
                Finding::Reordered { chain: "1/a".into(), seq: 2, after: 10 },
                Finding::Missing { chain: "1/a".into(), from: 2, to: 2 },
            ]
        );
        // Within the bound it is only reordered, as with every event kept.
        let mut within = events.clone();
        let late = within.remove(7);
        within.push(late);
        let mut verifier = Verifier::with_bounds("acme", small());
        read(&mut verifier, &within);
        assert_eq!(verifier.finish().findings, vec![Finding::Reordered { chain: "1/a".into(), seq: 8, after: 10 }]);
    }

    #[test]
    fn findings_past_the_bound_are_counted_and_the_report_is_not_clean() {
        let mut events = chain_of("acme", "1/a", 10);
        for event in events.iter_mut().skip(2) {
            event.data.outcome = Outcome::Denied;
        }
        let mut verifier = Verifier::with_bounds("acme", small());
        read(&mut verifier, &events);
        let report = verifier.finish();
        assert_eq!((report.findings.len(), report.more_findings), (3, 5));
        assert!(!report.is_clean());
    }

    #[test]
    fn a_chain_seq_of_zero_is_a_broken_link() {
        let mut events = chain_of("acme", "1/a", 2);
        events[0].chainseq = 0;
        events[0].chainhash = event_hash(&events[0]);
        let report = verify("acme", &events[..1]);
        assert_eq!(report.findings, vec![Finding::BrokenLink { chain: "1/a".into(), seq: 0 }]);
    }
}
