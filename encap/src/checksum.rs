//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! `sum` adds 32-bit words into 64-bit accumulators, which need one carry
//! fold at the end instead of one per word; that is the trick wireguard-go
//! and the kernel use to make checksums cheap. It reads the words in the
//! machine's own byte order and swaps the folded result once (RFC 1071
//! §2(B): the sum is byte-order independent), so the loop is plain
//! independent additions that the compiler turns into vector code.

/// Adds `data` as big-endian 16-bit words to `initial` without folding.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let native = fold(sum_native(data));
    initial + u64::from(u16::from_be_bytes(native.to_ne_bytes()))
}

/// The ones' complement sum of `data` read as 16-bit words in native byte
/// order, unfolded. Eight independent lanes keep the additions free of a
/// dependency chain.
fn sum_native(data: &[u8]) -> u64 {
    const LANES: usize = 8;
    let mut acc = [0u64; LANES];
    let mut blocks = data.chunks_exact(4 * LANES);
    for b in &mut blocks {
        for (lane, w) in acc.iter_mut().zip(b.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let mut total: u64 = acc.iter().map(|&a| fold_to_32(a)).sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        total += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut rest = words.remainder();
    if rest.len() >= 2 {
        total += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        // The odd byte is the high half of a zero-padded big-endian word.
        total += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    total
}

/// Folds a lane to 33 bits at most, so eight lanes add without overflow.
#[inline]
fn fold_to_32(a: u64) -> u64 {
    (a & 0xffff_ffff) + (a >> 32)
}

/// Folds a 64-bit accumulator to 16 bits (ones' complement sum, not negated).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`: the ones' complement of the ones'
/// complement sum. A buffer that contains its own valid checksum sums to 0.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Updates a checksum after one 16-bit word changed from `old` to `new`,
/// following RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`.
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!csum) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56], 0)), 0x1234 + 0x5600);
    }

    #[test]
    fn update_matches_recompute() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x54, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 0x0a, 0xf4,
            0x01, 0x00, 0x0a, 0xf4, 0x02, 0x02,
        ];
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u16::from_be_bytes([hdr[8], hdr[9]]);
        hdr[8] = 0x3f;
        let new = u16::from_be_bytes([hdr[8], hdr[9]]);
        let updated = update16(c, old, new);
        hdr[10..12].fill(0);
        assert_eq!(updated, checksum(&hdr));
    }

    /// The straightforward big-endian word sum, as the oracle.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for w in data.chunks(2) {
            acc += (u64::from(w[0]) << 8) | w.get(1).copied().map_or(0, u64::from);
        }
        fold(acc)
    }

    #[test]
    fn every_length_and_alignment_agrees_with_the_reference() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 151 + 13) as u8).collect();
        for start in 0..8 {
            for end in start..data.len() {
                let d = &data[start..end];
                assert_eq!(fold(sum(d, 0)), reference(d), "{start}..{end}");
            }
        }
        // Saturated words carry on every addition.
        let ff = vec![0xffu8; 4099];
        assert_eq!(fold(sum(&ff, 0)), reference(&ff));
        assert_eq!(
            fold(sum(&ff, 0x1234)),
            fold(u64::from(reference(&ff)) + 0x1234)
        );
    }

    #[test]
    fn long_buffers_agree_with_word_by_word() {
        let data: Vec<u8> = (0..1401u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut naive: u64 = 0;
        for w in data.chunks(2) {
            let hi = u64::from(w[0]) << 8;
            let lo = w.get(1).copied().map(u64::from).unwrap_or(0);
            naive += hi | lo;
        }
        assert_eq!(fold(sum(&data, 0)), fold(naive));
    }
}
