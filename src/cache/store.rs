//! A bounded in-memory [`Storage`] for `pingora-cache`.
//!
//! Pingora ships only `MemCache`, documented as for testing: it copies every body twice and
//! does not count what it holds. This store keeps one `Bytes` per entry (a hit hands out a
//! reference, never a copy), reports each entry's full weight (body, serialized meta and key)
//! to the eviction manager that bounds it, and remembers each entry's primary key text so
//! that the admin listener can purge by host, path or path prefix.
//!
//! Waiting readers are handled by the cache lock, not here: a miss is written in full before
//! it becomes visible, so the store never serves a partial body.

use bytes::{Bytes, BytesMut};
use pingora::cache::eviction::{CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::prelude::*;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Bytes charged per entry on top of its body, meta and key: map slot, `Arc`, LRU node.
const ENTRY_OVERHEAD: usize = 160;

/// One stored response.
struct Entry {
    /// `CacheMeta::serialize()` output: internal meta and header.
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    /// The primary key text (see `super::primary_key`), for purges by host and path.
    primary: Box<str>,
    key: CompactCacheKey,
}

impl Entry {
    fn weight(&self) -> usize {
        self.body.len()
            + self.meta.0.len()
            + self.meta.1.len()
            + self.primary.len()
            + ENTRY_OVERHEAD
    }
}

/// Entries by combined (primary + variance) hash, and the hashes of each host and path.
#[derive(Default)]
struct Entries {
    by_hash: HashMap<HashBinary, Arc<Entry>>,
    /// `host\npath` to the entries stored for it (every route, method, variant and
    /// consumer), so that invalidating one URL does not scan the store.
    by_target: HashMap<Box<str>, Vec<HashBinary>>,
}

/// The host and path of a primary key (`route\nmethod\nhost\npath\nconsumer`).
fn target_of(primary: &str) -> &str {
    let mut cut = primary.match_indices('\n').map(|(i, _)| i);
    match (cut.nth(1), cut.nth(1)) {
        (Some(a), Some(b)) => &primary[a + 1..b],
        _ => "",
    }
}

impl Entries {
    fn insert(&mut self, hash: HashBinary, entry: Arc<Entry>) {
        let target = target_of(&entry.primary);
        let list = self.by_target.entry(target.into()).or_default();
        if !list.contains(&hash) {
            list.push(hash);
        }
        self.by_hash.insert(hash, entry);
    }

    fn remove(&mut self, hash: &HashBinary) -> Option<Arc<Entry>> {
        let entry = self.by_hash.remove(hash)?;
        let target = target_of(&entry.primary);
        if let Some(list) = self.by_target.get_mut(target) {
            list.retain(|h| h != hash);
            if list.is_empty() {
                self.by_target.remove(target);
            }
        }
        Some(entry)
    }
}

/// The store.
pub struct MemoryStore {
    entries: RwLock<Entries>,
    /// Largest body kept, in bytes.
    max_object: usize,
}

impl MemoryStore {
    pub fn new(max_object: usize) -> Self {
        MemoryStore {
            entries: RwLock::new(Entries::default()),
            max_object,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remove every entry whose primary key text satisfies `matches`, also from `eviction`
    /// so that its weight is released. Returns how many were removed.
    pub fn purge_where(
        &self,
        eviction: &dyn EvictionManager,
        matches: impl Fn(&str) -> bool,
    ) -> usize {
        let removed: Vec<Arc<Entry>> = {
            let mut entries = self.write();
            let doomed: Vec<HashBinary> = entries
                .by_hash
                .iter()
                .filter(|(_, e)| matches(&e.primary))
                .map(|(k, _)| *k)
                .collect();
            doomed.iter().filter_map(|k| entries.remove(k)).collect()
        };
        for entry in &removed {
            eviction.remove(CacheEntryKeyRef::KeyOnly(&entry.key));
        }
        removed.len()
    }

    /// Remove the entries stored for exactly `host` and `path` (path and query), of every
    /// route, method, variant and consumer: an index lookup, not a scan.
    pub fn purge_target(&self, eviction: &dyn EvictionManager, host: &str, path: &str) -> usize {
        let removed: Vec<Arc<Entry>> = {
            let mut entries = self.write();
            let target = format!("{host}\n{path}");
            let hashes = entries
                .by_target
                .get(target.as_str())
                .cloned()
                .unwrap_or_default();
            hashes.iter().filter_map(|h| entries.remove(h)).collect()
        };
        for entry in &removed {
            eviction.remove(CacheEntryKeyRef::KeyOnly(&entry.key));
        }
        removed.len()
    }

    /// Largest body stored, in bytes.
    pub fn max_object(&self) -> usize {
        self.max_object
    }
}

/// Serves a stored body: the whole `Bytes` at once, or the range a `Range` request asked for.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait::async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} beyond body length {}", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a response body; the entry appears in the store only when it is complete.
struct Miss {
    store: &'static MemoryStore,
    hash: HashBinary,
    meta: (Vec<u8>, Vec<u8>),
    primary: Box<str>,
    key: CompactCacheKey,
    body: BytesMut,
    /// Largest body stored; a longer one is dropped and the response merely passes through.
    limit: usize,
    oversize: bool,
}

#[async_trait::async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        // Never fail here: an error would cut the client's response. Pingora's own
        // `max_file_size` does exactly that for bodies without a Content-Length.
        if self.oversize || self.body.len() + data.len() > self.limit {
            self.oversize = true;
            self.body = BytesMut::new();
        } else {
            self.body.extend_from_slice(&data);
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.oversize {
            return Error::e_explain(
                ErrorType::Custom("response too large"),
                format!("body exceeds cache.max_object_size ({} bytes)", self.limit),
            );
        }
        let Miss {
            store,
            hash,
            meta,
            primary,
            key,
            body,
            ..
        } = *self;
        let entry = Entry {
            meta,
            body: body.freeze(),
            primary,
            key,
        };
        let weight = entry.weight();
        store.write().insert(hash, Arc::new(entry));
        Ok(MissFinishType::Created(weight))
    }
}

#[async_trait::async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.read().by_hash.get(&key.combined_bin()).cloned() else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&entry.meta.0, &entry.meta.1)?;
        let hit = Hit {
            body: entry.body.clone(),
            start: 0,
            end: entry.body.len(),
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            store: self,
            hash: key.combined_bin(),
            meta: meta.serialize()?,
            primary: key.primary_key_str().unwrap_or("").into(),
            key: key.to_compact(),
            body: BytesMut::new(),
            limit: self.max_object,
            oversize: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Entries carry no ids, so an id-specific purge cannot be one of ours.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        match self.write().remove(&target.key().combined_bin()) {
            Some(_) => Ok(PurgeOutcome::Purged(None)),
            None => Ok(PurgeOutcome::NotFound),
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let serialized = meta.serialize()?;
        let mut entries = self.write();
        let Some(entry) = entries.by_hash.get_mut(&key.combined_bin()) else {
            return Ok(false);
        };
        *entry = Arc::new(Entry {
            meta: serialized,
            body: entry.body.clone(),
            primary: entry.primary.clone(),
            key: entry.key.clone(),
        });
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::target_of;

    #[test]
    fn target_is_host_and_path_of_the_primary_key() {
        assert_eq!(
            target_of("route\nGET\napi.test\n/a?b=1\nalice"),
            "api.test\n/a?b=1"
        );
        assert_eq!(target_of("route\nGET\n\n/a\n"), "\n/a");
        assert_eq!(target_of("broken"), "");
    }
}
