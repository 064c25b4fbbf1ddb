//! Key/value cache for incremental decoding, shared by every architecture.
//!
//! A cache holds, per decoder layer, the keys and values of every position
//! seen so far ([batch, kv_heads, len, head_dim], keys after the rotary
//! embedding). Rows of a batch may be left-padded to a common length: row b
//! starts with `padding[b]` slots that no real position attends to, and its
//! token in slot j sits at rotary position `j - padding[b]`, so a padded row
//! computes what the same tokens alone would.

use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::error::ModelError;

/// Keys and values of one decoder layer.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    /// Keys [batch, kv_heads, len, head_dim], none before the first forward.
    pub keys: Option<Tensor<4>>,
    /// Values [batch, kv_heads, len, head_dim], none before the first forward.
    pub values: Option<Tensor<4>>,
}

impl LayerKv {
    /// Appends the keys and values of new positions ([batch, kv_heads, new,
    /// head_dim]) and returns all of them, old then new.
    pub fn append(&mut self, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let keys = match self.keys.take() {
            Some(old) => Tensor::cat(vec![old, keys], 2),
            None => keys,
        };
        let values = match self.values.take() {
            Some(old) => Tensor::cat(vec![old, values], 2),
            None => values,
        };
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys, values)
    }
}

/// The key/value cache of a batch of sequences: one [`LayerKv`] per decoder
/// layer, the left padding of each row and the number of slots filled.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per-layer keys and values, bottom layer first.
    pub layers: Vec<LayerKv>,
    padding: Vec<usize>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `layers` decoder layers and rows with the given
    /// left padding (one entry per row of the batch).
    pub fn new(layers: usize, padding: Vec<usize>) -> Self {
        KvCache { layers: vec![LayerKv::default(); layers], padding, len: 0 }
    }

    /// Rows of the batch.
    pub fn batch(&self) -> usize {
        self.padding.len()
    }

    /// Slots filled so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is filled yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Left-padding slots of each row.
    pub fn padding(&self) -> &[usize] {
        &self.padding
    }

    /// Checks that a forward of `batch` rows of `new` tokens fits this cache
    /// (same batch, padding within the slots filled after it).
    pub fn check_step(&self, batch: usize, new: usize) -> Result<(), ModelError> {
        if batch != self.batch() {
            return Err(ModelError::Input(format!("the cache holds {} rows; the tokens have {batch}", self.batch())));
        }
        if new == 0 {
            return Err(ModelError::Input("expected at least one new token per row; found none".into()));
        }
        if let Some(&p) = self.padding.iter().find(|&&p| p >= self.len + new) {
            return Err(ModelError::Input(format!(
                "a row with {p} padding slots needs at least one real token: after this step the cache holds {} slots",
                self.len + new
            )));
        }
        Ok(())
    }

    /// Records that `new` slots were appended to every layer.
    pub fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Rotary position of each new slot, [batch][new]: slot j of row b is at
    /// position `j - padding[b]` (padding slots at 0).
    pub fn positions(&self, new: usize) -> Vec<Vec<usize>> {
        self.padding.iter().map(|&p| (self.len..self.len + new).map(|j| j.saturating_sub(p)).collect()).collect()
    }

    /// Attention mask [batch, 1, new * group, len + new], true where a query
    /// may not look: later slots, the padding of its row (for real
    /// positions; a padding slot sees the padding before it, so that its
    /// softmax stays finite) and, with `window`, keys `window` or more
    /// positions back. Query row `r * new + i` is new slot i (`group` copies,
    /// one per query head sharing a key/value head).
    pub fn mask(&self, new: usize, group: usize, window: Option<usize>, device: &Device) -> Tensor<4, Bool> {
        let total = self.len + new;
        let mut values = Vec::with_capacity(self.batch() * group * new * total);
        for &pad in &self.padding {
            for _ in 0..group {
                for i in 0..new {
                    let q = self.len + i;
                    for k in 0..total {
                        let hidden = k > q || (q >= pad && k < pad) || window.is_some_and(|w| q >= pad && k >= pad && q - k >= w);
                        values.push(hidden);
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(values, [self.batch(), 1, group * new, total]), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(deprecated)]
    fn cpu() -> Device {
        Device::ndarray()
    }

    #[test]
    fn positions_start_after_the_padding_and_continue_past_the_cache() {
        let mut cache = KvCache::new(1, vec![0, 2]);
        assert_eq!(cache.positions(3), vec![vec![0, 1, 2], vec![0, 0, 0]]);
        cache.advance(3);
        assert_eq!(cache.positions(1), vec![vec![3], vec![1]]);
    }

    #[test]
    fn mask_hides_future_slots_and_padding() {
        let mut cache = KvCache::new(1, vec![0, 1]);
        cache.advance(1);
        // One new slot (slot 1) over two slots; row 1 has one padding slot.
        let mask = cache.mask(1, 2, None, &cpu()).into_data().try_into_vec::<bool>().unwrap();
        assert_eq!(mask, vec![false, false, false, false, true, false, true, false]);
        let fresh = KvCache::new(1, vec![2]);
        // Slots 0, 1 padding, 2 real: padding sees earlier padding, the real slot only itself.
        let mask = fresh.mask(3, 1, None, &cpu()).into_data().try_into_vec::<bool>().unwrap();
        assert_eq!(mask, vec![false, true, true, false, false, true, true, true, false]);
        // A window of 2 hides keys two or more positions back.
        let plain = KvCache::new(1, vec![0]);
        let mask = plain.mask(3, 1, Some(2), &cpu()).into_data().try_into_vec::<bool>().unwrap();
        assert_eq!(mask, vec![false, true, true, false, false, true, true, false, false]);
    }

    #[test]
    fn steps_must_match_the_batch_and_leave_a_real_token() {
        let cache = KvCache::new(1, vec![0, 3]);
        assert!(cache.check_step(3, 1).is_err());
        assert!(cache.check_step(2, 3).is_err());
        assert!(cache.check_step(2, 4).is_ok());
    }
}
