//! What an API token replica costs a filter: the heap bytes of an
//! [`ApiTokenReplica`] holding 100 000 tokens, counted by a global allocator, and the
//! bytes of their feed JSON. Native only (the allocator counts this process).
//! `cargo test -p portcullis-core --test api_token_memory -- --nocapture` prints them
//! (docs/control-plane.md quotes the numbers).
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use portcullis_core::api_token::{
    generate, ApiTokenEntry, ApiTokenFeedPage, ApiTokenReplica, ApiTokenSnapshotPart, MAX_FEED_PAGE_ENTRIES,
    RANDOM_BYTES,
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TOKENS: usize = 100_000;

/// A realistic token: a 20-odd byte user id and two scopes.
fn entry(i: usize) -> ApiTokenEntry {
    let mut random = [0u8; RANDOM_BYTES];
    for (j, b) in random.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761).wrapping_add(j * 97) >> (j % 8)) as u8;
    }
    random[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let token = generate("pct", &random).unwrap();
    ApiTokenEntry {
        lookup: token.lookup().to_owned(),
        verifier: token.verifier().encode(),
        user: format!("user-{i:06}@example.com"),
        scopes: vec!["deploy".to_owned(), "read:packages".to_owned()],
        expires_at: 1_800_000_000 + i as u64,
        revoked_at: None,
    }
}

#[test]
fn a_replica_of_100k_tokens_takes_under_32_mib_on_the_heap() {
    let entries: Vec<ApiTokenEntry> = (0..TOKENS).map(entry).collect();
    let pages: Vec<ApiTokenFeedPage> = entries
        .chunks(MAX_FEED_PAGE_ENTRIES)
        .enumerate()
        .map(|(part, chunk)| ApiTokenFeedPage {
            cursor: format!("s.{part}"),
            snapshot: Some(ApiTokenSnapshotPart {
                id: "s".into(),
                part: part as u32,
                last: (part + 1) * MAX_FEED_PAGE_ENTRIES >= TOKENS,
            }),
            tokens: chunk.to_vec(),
            more: true,
        })
        .collect();
    let json_bytes: usize = pages.iter().map(|p| serde_json::to_vec(p).unwrap().len()).sum();

    let before = LIVE.load(Ordering::SeqCst);
    let mut replica = ApiTokenReplica::default();
    for page in &pages {
        replica.apply(page).unwrap();
    }
    let bytes = LIVE.load(Ordering::SeqCst) - before;
    assert_eq!(replica.len(), TOKENS, "lookups are distinct");
    let per_token = bytes as f64 / TOKENS as f64;
    println!(
        "replica of {TOKENS} API tokens: {:.1} MiB on the heap ({per_token:.0} bytes per token); \
         feed JSON {:.1} MiB ({} bytes per token)",
        bytes as f64 / (1024.0 * 1024.0),
        json_bytes as f64 / (1024.0 * 1024.0),
        json_bytes / TOKENS
    );
    // Verifier (32) + lookup key (8) + user and scopes boxed + expiry + map overhead.
    assert!(bytes > (TOKENS * 40) as isize, "the count saw the replica ({bytes} bytes)");
    assert!(bytes < 32 * 1024 * 1024, "a replica of {TOKENS} tokens takes {bytes} bytes");
    drop(replica);
}
