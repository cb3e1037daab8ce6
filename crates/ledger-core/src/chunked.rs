//! [`Chunked`]: an append-only list whose full chunks are shared between copies.
//!
//! A snapshot copies the shard's state while no entry can be applied. The parts of that state
//! that grow with every debit (an account's journal, the debit records) are append-only, so
//! they are kept as full chunks of `CHUNK` items behind `Arc`s plus a tail: a copy clones one
//! pointer per full chunk and at most `CHUNK - 1` items (`benches/RESULTS.md`, session 11).

use std::sync::Arc;

/// Items in the order pushed: full chunks of exactly `CHUNK` items, each a `Vec` moved (not
/// copied) behind an `Arc` when it fills, then the tail.
#[derive(Clone, Debug)]
pub(crate) struct Chunked<T, const CHUNK: usize> {
    full: Vec<Arc<Vec<T>>>,
    tail: Vec<T>,
}

impl<T, const CHUNK: usize> Default for Chunked<T, CHUNK> {
    fn default() -> Self {
        Chunked::new()
    }
}

impl<T, const CHUNK: usize> Chunked<T, CHUNK> {
    pub(crate) const fn new() -> Self {
        Chunked {
            full: Vec::new(),
            tail: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, item: T) {
        self.tail.push(item);
        if self.tail.len() == CHUNK {
            let chunk = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK));
            self.full.push(Arc::new(chunk));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.full.len() * CHUNK + self.tail.len()
    }

    /// The item at `position`; panics past the end, like a slice.
    pub(crate) fn get(&self, position: usize) -> &T {
        match self.full.get(position / CHUNK) {
            Some(chunk) => &chunk[position % CHUNK],
            None => &self.tail[position - self.full.len() * CHUNK],
        }
    }

    pub(crate) fn last(&self) -> Option<&T> {
        self.tail
            .last()
            .or_else(|| self.full.last().and_then(|chunk| chunk.last()))
    }

    /// The items, oldest first.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        self.full
            .iter()
            .flat_map(|chunk| chunk.iter())
            .chain(self.tail.iter())
    }
}

impl<T: Clone, const CHUNK: usize> Chunked<T, CHUNK> {
    /// The item at `position`, to change in place; a full chunk still shared with a copy is
    /// copied first, so the copy keeps the old item.
    pub(crate) fn get_mut(&mut self, position: usize) -> &mut T {
        let in_full = self.full.len() * CHUNK;
        match self.full.get_mut(position / CHUNK) {
            Some(chunk) => &mut Arc::make_mut(chunk)[position % CHUNK],
            None => &mut self.tail[position - in_full],
        }
    }
}
