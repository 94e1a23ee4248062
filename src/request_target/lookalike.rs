//! Code points that a lenient upstream could turn into `.`, `/` or `\`.
//!
//! Every code point whose NFKC form contains `.`, `/` or `\` (Unicode 14, computed with
//! Python's `unicodedata.normalize("NFKC", c)` over all code points), plus five solidus
//! look-alikes that NFKC leaves alone but best-fit code-page mappings turn into `/` or `\`
//! (U+2044, U+2215, U+29F5, U+29F8, U+29F9). Sorted, for a binary search.
pub const DOT_SLASH_LOOKALIKES: &[char] = &[
    '\u{2024}',
    '\u{2025}',
    '\u{2026}',
    '\u{2044}',
    '\u{2100}',
    '\u{2101}',
    '\u{2105}',
    '\u{2106}',
    '\u{2215}',
    '\u{2488}',
    '\u{2489}',
    '\u{248a}',
    '\u{248b}',
    '\u{248c}',
    '\u{248d}',
    '\u{248e}',
    '\u{248f}',
    '\u{2490}',
    '\u{2491}',
    '\u{2492}',
    '\u{2493}',
    '\u{2494}',
    '\u{2495}',
    '\u{2496}',
    '\u{2497}',
    '\u{2498}',
    '\u{2499}',
    '\u{249a}',
    '\u{249b}',
    '\u{29f5}',
    '\u{29f8}',
    '\u{29f9}',
    '\u{33c2}',
    '\u{33c7}',
    '\u{33d8}',
    '\u{fe19}',
    '\u{fe30}',
    '\u{fe52}',
    '\u{fe68}',
    '\u{ff0e}',
    '\u{ff0f}',
    '\u{ff3c}',
    '\u{1f100}',
];

/// Whether `c` could become `.`, `/` or `\` in a lenient upstream.
pub fn is_dot_slash_lookalike(c: char) -> bool {
    DOT_SLASH_LOOKALIKES.binary_search(&c).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_holds_the_known_ones() {
        assert!(DOT_SLASH_LOOKALIKES.windows(2).all(|w| w[0] < w[1]));
        for c in ['．', '／', '＼', '﹒', '﹨', '․', '‥', '…', '∕', '⁄'] {
            assert!(is_dot_slash_lookalike(c), "{c}");
        }
        for c in ['.', '/', 'é', 'ａ', '。'] {
            assert!(!is_dot_slash_lookalike(c), "{c}");
        }
    }
}
