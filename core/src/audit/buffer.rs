//! The buffer of decisions waiting for the control plane, one per Envoy (a shared-data
//! value every worker appends to with compare-and-swap), and the batches cut from it.
//!
//! The buffer holds at most a configured number of decisions (each the JSON of a
//! [`super::DecisionRecord`]); when a push would go over, the oldest waiting ones are
//! dropped and the push says how many, so every drop is counted once. The oldest
//! decisions form the batch in flight (its id is in the buffer, so whichever worker
//! sends it next sends the same id, and the control plane stores it once); they leave
//! the buffer only when the control plane acknowledged the batch. Decisions of the
//! batch in flight are dropped only when nothing else is left to drop (a buffer no
//! larger than a batch).
//!
//! Encoding (all integers big-endian): `PAB1`, the buffer's random id (u64), the next
//! batch number (u64), the batch in flight (u32 count; 0: none), then the decisions
//! (u32 count; each a u32 length and its bytes). Batch ids are `<buffer id>-<number>`
//! in hex and decimal: unique per buffer, and a new buffer (a restarted Envoy, a value
//! that does not decode) gets a new random id.

use std::collections::VecDeque;

const MAGIC: &[u8; 4] = b"PAB1";
/// Largest decision kept (a record's text fields are bounded, so real ones are far
/// smaller).
pub const MAX_EVENT_BYTES: usize = 8 * 1024;

/// The decoded buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    id: u64,
    next_batch: u64,
    in_flight: usize,
    events: VecDeque<Vec<u8>>,
}

/// A batch to send: its id and the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: String,
    pub len: usize,
    pub body: Vec<u8>,
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
    *bytes = rest;
    Some(head)
}

fn u64_of(bytes: &mut &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(take(bytes, 8)?.try_into().ok()?))
}

fn u32_of(bytes: &mut &[u8]) -> Option<usize> {
    usize::try_from(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?)).ok()
}

fn len_u32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

impl Ring {
    /// An empty buffer with a random id.
    pub fn new(id: u64) -> Self {
        Ring { id, next_batch: 0, in_flight: 0, events: VecDeque::new() }
    }

    /// The buffer in `bytes`; `None` when they are not one.
    pub fn decode(mut bytes: &[u8]) -> Option<Self> {
        let b = &mut bytes;
        if take(b, 4)? != MAGIC {
            return None;
        }
        let (id, next_batch, in_flight, count) = (u64_of(b)?, u64_of(b)?, u32_of(b)?, u32_of(b)?);
        let mut events = VecDeque::with_capacity(count.min(b.len() / 4));
        for _ in 0..count {
            let len = u32_of(b)?;
            events.push_back(take(b, len)?.to_vec());
        }
        if !b.is_empty() || in_flight > events.len() {
            return None;
        }
        Some(Ring { id, next_batch, in_flight, events })
    }

    /// What is in shared data, or a new buffer (`fresh_id`) when nothing valid is.
    pub fn decode_or_new(bytes: Option<&[u8]>, fresh_id: u64) -> Self {
        bytes.and_then(Ring::decode).unwrap_or_else(|| Ring::new(fresh_id))
    }

    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.events.iter().map(|e| e.len() + 4).sum();
        let mut out = Vec::with_capacity(28 + size);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.next_batch.to_be_bytes());
        out.extend_from_slice(&len_u32(self.in_flight));
        out.extend_from_slice(&len_u32(self.events.len()));
        for e in &self.events {
            out.extend_from_slice(&len_u32(e.len()));
            out.extend_from_slice(e);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Appends `events` (oversized ones are dropped) and drops the oldest waiting
    /// decisions beyond `capacity`; answers how many were dropped in all.
    pub fn push(&mut self, events: impl IntoIterator<Item = Vec<u8>>, capacity: usize) -> u64 {
        let mut dropped = 0u64;
        for e in events {
            if e.len() > MAX_EVENT_BYTES {
                dropped += 1;
            } else {
                self.events.push_back(e);
            }
        }
        let capacity = capacity.max(1);
        while self.events.len() > capacity {
            // The oldest waiting decision is the first after the batch in flight; only a
            // buffer holding nothing else loses decisions of that batch.
            let index = if self.in_flight < self.events.len() { self.in_flight } else { 0 };
            if index == 0 && self.in_flight > 0 {
                self.in_flight -= 1;
            }
            self.events.remove(index);
            dropped += 1;
        }
        dropped
    }

    /// The batch to send: the one in flight (same id, for a resend), or a new one of
    /// the oldest `max` decisions. `None` when the buffer is empty.
    pub fn batch(&mut self, max: usize) -> Option<Batch> {
        if self.in_flight == 0 {
            self.in_flight = self.events.len().min(max.max(1));
            self.next_batch = self.next_batch.wrapping_add(1);
        }
        if self.in_flight == 0 {
            return None;
        }
        let id = self.batch_id();
        let events: Vec<&[u8]> = self.events.iter().take(self.in_flight).map(Vec::as_slice).collect();
        Some(Batch { body: batch_body(&id, &events), id, len: events.len() })
    }

    /// The id of the batch in flight.
    fn batch_id(&self) -> String {
        format!("{:016x}-{}", self.id, self.next_batch)
    }

    /// The control plane stored batch `id` (or had before): its decisions leave the
    /// buffer. Answers how many; 0 when `id` is not the batch in flight.
    pub fn acknowledge(&mut self, id: &str) -> usize {
        if self.in_flight == 0 || self.batch_id() != id {
            return 0;
        }
        let n = self.in_flight;
        self.events.drain(..n);
        self.in_flight = 0;
        n
    }

    /// Whether a batch is due whatever the time: one is in flight (a resend), or a
    /// full one waits.
    pub fn batch_ready(&self, batch_size: usize) -> bool {
        self.in_flight > 0 || self.events.len() >= batch_size
    }
}

/// `{"batchId": id, "decisions": [events…]}` from records already in JSON.
pub fn batch_body(id: &str, events: &[&[u8]]) -> Vec<u8> {
    let size: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut body = Vec::with_capacity(size + id.len() + 32);
    body.extend_from_slice(b"{\"batchId\":");
    body.extend_from_slice(serde_json::to_string(id).unwrap_or_default().as_bytes());
    body.extend_from_slice(b",\"decisions\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Decision, DecisionBatch, DecisionRecord};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn event(i: u64) -> Vec<u8> {
        let record =
            DecisionRecord { request_id: Some(format!("r{i}")), ..DecisionRecord::new(i, Decision::Deny) };
        serde_json::to_vec(&record).unwrap()
    }

    fn times(batch: &Batch) -> Vec<u64> {
        let parsed: DecisionBatch = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(parsed.batch_id, batch.id);
        parsed.decisions.iter().map(|d| d.time_ms).collect()
    }

    #[test]
    fn a_batch_is_resent_with_its_id_until_acknowledged() {
        let mut ring = Ring::new(7);
        assert_eq!(ring.push((0..5).map(event), 100), 0);
        let first = ring.batch(3).unwrap();
        assert_eq!((first.id.as_str(), times(&first)), ("0000000000000007-1", vec![0, 1, 2]));
        ring.push([event(5)], 100);
        let again = Ring::decode(&ring.encode()).unwrap().batch(3).unwrap();
        assert_eq!(again, first, "a resend after a round trip through shared data is the same batch");
        assert_eq!(ring.acknowledge("0000000000000007-9"), 0, "another id changes nothing");
        assert_eq!(ring.acknowledge(&first.id), 3);
        assert_eq!(ring.acknowledge(&first.id), 0, "acknowledged once");
        let second = ring.batch(3).unwrap();
        assert_eq!((second.id.as_str(), times(&second)), ("0000000000000007-2", vec![3, 4, 5]));
        ring.acknowledge(&second.id);
        assert!(ring.batch(3).is_none() && ring.is_empty());
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_waiting_decisions_and_counts_each() {
        let mut ring = Ring::new(1);
        ring.push((0..4).map(event), 6);
        let batch = ring.batch(2).unwrap();
        assert_eq!(ring.push((4..10).map(event), 6), 4);
        assert_eq!(ring.len(), 6);
        assert_eq!(ring.batch(2).unwrap(), batch, "the batch in flight is kept whole");
        ring.acknowledge(&batch.id);
        assert_eq!(times(&ring.batch(10).unwrap()), vec![6, 7, 8, 9]);
        // A buffer no larger than a batch loses decisions of the batch in flight too.
        let mut tiny = Ring::new(2);
        tiny.push((0..2).map(event), 2);
        tiny.batch(2).unwrap();
        assert_eq!(tiny.push((2..5).map(event), 2), 3);
        assert_eq!(tiny.len(), 2);
        assert_eq!(tiny.push([vec![b'x'; MAX_EVENT_BYTES + 1]], 2), 1, "oversized");
    }

    #[test]
    fn anything_but_a_buffer_decodes_to_none_and_starts_a_new_one() {
        let mut ring = Ring::new(3);
        ring.push((0..3).map(event), 10);
        let bytes = ring.encode();
        assert_eq!(Ring::decode(&bytes), Some(ring.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(Ring::decode(&bytes[..cut]), None, "{cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Ring::decode(&longer), None);
        assert_eq!(Ring::decode_or_new(Some(b"junk"), 9), Ring::new(9));
        assert_eq!(Ring::decode_or_new(Some(&bytes), 9), ring);
    }
}
