//! First-fit bookkeeping of the regions of an argument arena (arena.rs; docs/architecture.md,
//! "Large data"). Apart from the NIF so that its unit tests run without the BEAM.

use std::collections::BTreeMap;

/// The regions in use (offset => length, page-rounded) of an argument arena, and the end of
/// the space whose pages may be allocated.
#[derive(Default)]
pub struct Regions {
    pub regions: BTreeMap<usize, usize>,
    pub high: usize,
}

impl Regions {
    /// The lowest offset where `size` bytes fit below `cap` (first fit), now in use.
    pub fn take(&mut self, size: usize, cap: usize) -> Option<usize> {
        let mut at = 0;
        for (&off, &len) in &self.regions {
            if off >= at + size {
                break;
            }
            at = at.max(off + len);
        }
        if at + size > cap {
            return None;
        }
        self.regions.insert(at, size);
        self.high = self.high.max(at + size);
        Some(at)
    }

    /// The free ranges between `retain` and `high`, whose pages can go back to the kernel.
    pub fn surplus(&self, retain: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut at = retain;
        for (&off, &len) in self.regions.range(..self.high) {
            if off > at {
                out.push((at, off));
            }
            at = at.max(off + len);
        }
        if self.high > at {
            out.push((at, self.high));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_freed_space_and_surplus_lists_what_lies_above_retain() {
        let mut a = Regions::default();
        assert_eq!(a.take(100, 1000), Some(0));
        assert_eq!(a.take(200, 1000), Some(100));
        assert_eq!(a.take(700, 1000), Some(300));
        assert_eq!(a.take(1, 1000), None);
        a.regions.remove(&100);
        assert_eq!(a.take(300, 1000), None);
        assert_eq!(a.take(150, 1000), Some(100));
        a.regions.remove(&300);
        assert_eq!(a.surplus(200), vec![(250, 1000)]);
        assert_eq!(a.surplus(0), vec![(250, 1000)]);
        a.regions.clear();
        assert_eq!(a.surplus(400), vec![(400, 1000)]);
    }
}
