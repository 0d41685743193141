//! Preallocated packet buffers: one backing allocation per worker and
//! direction, cut into fixed slots that are reused every batch. Each slot
//! starts with `weft_encap::HEADROOM` bytes so outer headers are written in
//! place in front of the packet.

/// `count` slots of `slot_len` bytes in one allocation.
pub struct PacketBufs {
    data: Vec<u8>,
    slot_len: usize,
}

impl PacketBufs {
    /// Allocates `count` slots, each large enough for `payload` bytes after
    /// the headroom, rounded up to a cache line.
    pub fn new(count: usize, payload: usize) -> PacketBufs {
        let slot_len = (weft_encap::HEADROOM + payload).div_ceil(64) * 64;
        PacketBufs {
            data: vec![0; count * slot_len],
            slot_len,
        }
    }

    /// Number of slots.
    pub fn count(&self) -> usize {
        self.data.len() / self.slot_len
    }

    /// Bytes in each slot, headroom included.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Slot `i`.
    #[inline]
    pub fn slot(&self, i: usize) -> &[u8] {
        &self.data[i * self.slot_len..(i + 1) * self.slot_len]
    }

    /// Slot `i`, writable.
    #[inline]
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * self.slot_len..(i + 1) * self.slot_len]
    }
}
