//! A bounded in-memory [`Storage`] for `pingora-cache`.
//!
//! NOTE(pingora-0.9): pingora-cache/src/memory.rs is for tests; this store replaces it.
//! Pingora ships only `MemCache`, documented as for testing: it copies every body twice and
//! does not count what it holds. This store keeps one `Bytes` per entry (a hit hands out a
//! reference, never a copy), reports each entry's full weight (body, serialized meta and key)
//! to the eviction manager that bounds it, and remembers each entry's primary key text so
//! that the admin listener can purge by host, path or path prefix.
//!
//! Waiting readers are handled by the cache lock, not here: a miss is written in full before
//! it becomes visible, so the store never serves a partial body.

use super::shared::{self, Lock, SharedTier};
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
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

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
pub(crate) struct MemoryStore {
    entries: RwLock<Entries>,
    /// Largest body kept, in bytes.
    max_object: usize,
    /// `[cache.shared]`: Redis behind the memory, and the eviction manager that entries
    /// copied from Redis are admitted to.
    shared: OnceLock<(&'static SharedTier, &'static (dyn EvictionManager + Sync))>,
    /// Keys whose fleet-wide fill lock this instance holds, with the lock's token.
    locked: Mutex<HashMap<HashBinary, String>>,
}

impl MemoryStore {
    pub(crate) fn new(max_object: usize) -> Self {
        MemoryStore {
            entries: RwLock::new(Entries::default()),
            max_object,
            shared: OnceLock::new(),
            locked: Mutex::new(HashMap::new()),
        }
    }

    /// Put Redis behind this store.
    pub(crate) fn share(
        &self,
        tier: &'static SharedTier,
        eviction: &'static (dyn EvictionManager + Sync),
    ) {
        let _ = self.shared.set((tier, eviction));
    }

    pub(crate) fn shared(&self) -> Option<&'static SharedTier> {
        self.shared.get().map(|(t, _)| *t)
    }

    /// The entry of `key` from Redis, copied into memory, or `None` (after taking the
    /// fill lock, or waiting for the instance holding it).
    async fn lookup_shared(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let (tier, eviction) = *self.shared.get()?;
        let hash = key.combined_bin();
        let name = hex::encode(hash);
        let value = match tier.get(&name).await {
            Some(v) => v,
            None => match tier.lock(&name).await {
                // The instance that filled it may have released its lock between the lookup
                // and this one: look again before fetching a second time.
                Lock::Taken(token) => match tier.get(&name).await {
                    Some(v) => {
                        tier.release(name.clone(), token);
                        v
                    }
                    None => {
                        self.locked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(hash, token);
                        return None;
                    }
                },
                Lock::Held(waiter) => tier.wait(waiter).await?,
                Lock::Unavailable => return None,
            },
        };
        let (meta, body) = shared::decode(&value)?;
        let fresh_until = CacheMeta::deserialize(&meta.0, &meta.1).ok()?.fresh_until();
        let entry = Arc::new(Entry {
            meta,
            body,
            primary: key.primary_key_str().unwrap_or("").into(),
            key: key.to_compact(),
        });
        let weight = entry.weight();
        self.write().insert(hash, entry.clone());
        let evicted = eviction.admit(
            CacheEntryKey::KeyOnly(key.to_compact()),
            weight,
            fresh_until,
        );
        if !evicted.is_empty() {
            let mut entries = self.write();
            for k in evicted {
                entries.remove(&k.key().combined_bin());
            }
        }
        Some(entry)
    }

    /// The request for `key` ended without storing a response (uncacheable, or failed):
    /// release its fleet-wide fill lock if it held one, so other instances stop waiting.
    pub(crate) fn abandon(&self, key: &CacheKey) {
        let Some(tier) = self.shared() else {
            return;
        };
        let hash = key.combined_bin();
        if let Some(token) = self.take_lock(&hash) {
            tier.release(hex::encode(hash), token);
        }
    }

    /// The token of the fill lock of `hash` this instance held (it no longer does).
    fn take_lock(&self, hash: &HashBinary) -> Option<String> {
        self.locked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash)
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
    pub(crate) fn purge_where(
        &self,
        eviction: &dyn EvictionManager,
        matches: impl Fn(&str) -> bool,
    ) -> Vec<HashBinary> {
        let removed: Vec<(HashBinary, Arc<Entry>)> = {
            let mut entries = self.write();
            let doomed: Vec<HashBinary> = entries
                .by_hash
                .iter()
                .filter(|(_, e)| matches(&e.primary))
                .map(|(k, _)| *k)
                .collect();
            doomed
                .iter()
                .filter_map(|k| Some((*k, entries.remove(k)?)))
                .collect()
        };
        for (_, entry) in &removed {
            eviction.remove(CacheEntryKeyRef::KeyOnly(&entry.key));
        }
        removed.into_iter().map(|(h, _)| h).collect()
    }

    /// Remove the entries stored for exactly `host` and `path` (path and query), of every
    /// route, method, variant and consumer: an index lookup, not a scan.
    pub(crate) fn purge_target(
        &self,
        eviction: &dyn EvictionManager,
        host: &str,
        path: &str,
    ) -> Vec<HashBinary> {
        let removed: Vec<(HashBinary, Arc<Entry>)> = {
            let mut entries = self.write();
            let target = format!("{host}\n{path}");
            let hashes = entries
                .by_target
                .get(target.as_str())
                .cloned()
                .unwrap_or_default();
            hashes
                .iter()
                .filter_map(|h| Some((*h, entries.remove(h)?)))
                .collect()
        };
        for (_, entry) in &removed {
            eviction.remove(CacheEntryKeyRef::KeyOnly(&entry.key));
        }
        removed.into_iter().map(|(h, _)| h).collect()
    }

    /// Largest body stored, in bytes.
    pub(crate) fn max_object(&self) -> usize {
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
    /// How long Redis keeps it (`[cache.shared]`).
    ttl: std::time::Duration,
}

#[async_trait::async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        // NOTE(pingora-0.9): pingora-proxy/src/proxy_cache.rs ends the response on a storage error.
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
        let locked = self.store.take_lock(&self.hash);
        if self.oversize {
            if let Some(tier) = self.store.shared() {
                tier.put(
                    hex::encode(self.hash),
                    "",
                    Vec::new(),
                    std::time::Duration::ZERO,
                    locked,
                );
            }
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
            ttl,
            ..
        } = *self;
        let entry = Entry {
            meta,
            body: body.freeze(),
            primary,
            key,
        };
        let weight = entry.weight();
        if let Some(tier) = store.shared() {
            if entry.body.len() <= tier.max_object {
                let value = shared::encode(&entry.meta, &entry.body);
                tier.put(
                    hex::encode(hash),
                    target_of(&entry.primary),
                    value,
                    ttl,
                    locked,
                );
            } else {
                tier.put(
                    hex::encode(hash),
                    "",
                    Vec::new(),
                    std::time::Duration::ZERO,
                    locked,
                );
            }
        }
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
        let found = self.read().by_hash.get(&key.combined_bin()).cloned();
        let Some(entry) = (match found {
            Some(e) => Some(e),
            None => self.lookup_shared(key).await,
        }) else {
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
            ttl: shared::ttl_of(meta),
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
        let hash = target.key().combined_bin();
        match self.write().remove(&hash) {
            Some(_) => {
                // An eviction stays local; any other purge (an invalidation) goes fleet-wide.
                if let (Some(tier), false) =
                    (self.shared(), matches!(_purge_type, PurgeType::Eviction))
                {
                    tier.delete(vec![hex::encode(hash)]);
                }
                Ok(PurgeOutcome::Purged(None))
            }
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
