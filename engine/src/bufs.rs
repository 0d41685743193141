//! Preallocated packet buffers: one set per worker and direction, allocated
//! at startup and reused every batch. Each slot starts with
//! `weft_encap::HEADROOM` bytes so outer headers are written in place in
//! front of the packet.

/// `count` slots of `slot_len` bytes.
pub struct PacketBufs {
    slots: Vec<Box<[u8]>>,
    slot_len: usize,
}

impl PacketBufs {
    /// Allocates `count` slots, each large enough for `payload` bytes after
    /// the headroom, rounded up to a cache line.
    pub fn new(count: usize, payload: usize) -> PacketBufs {
        let slot_len = (weft_encap::HEADROOM + payload).div_ceil(64) * 64;
        PacketBufs {
            slots: (0..count)
                .map(|_| vec![0; slot_len].into_boxed_slice())
                .collect(),
            slot_len,
        }
    }

    /// Number of slots.
    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// Bytes in each slot, headroom included.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Slot `i`.
    #[inline]
    pub fn slot(&self, i: usize) -> &[u8] {
        &self.slots[i]
    }

    /// Slot `i`, writable.
    #[inline]
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.slots[i]
    }

    /// Slots `from..`, for APIs that fill several at once.
    #[inline]
    pub fn slots_mut(&mut self, from: usize) -> &mut [Box<[u8]>] {
        &mut self.slots[from..]
    }
}
