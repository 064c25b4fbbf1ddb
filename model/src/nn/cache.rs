//! Key/value cache for incremental decoding, shared by every architecture.
//!
//! A cache holds, per decoder layer, the keys and values of every position
//! seen so far ([batch, kv_heads, len, head_dim], keys after the rotary
//! embedding). Rows of a batch may be left-padded to a common length: row b
//! starts with `padding[b]` slots that no real position attends to, and its
//! token in slot j sits at rotary position `j - padding[b]`, so a padded row
//! computes what the same tokens alone would.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::error::ModelError;
use kernels::{AttentionShape, NewHeads, ScoreScale};
use std::ops::Range;

/// Keys and values of one decoder layer: as tensors, or in host memory
/// (see [`HostKv`]) when the forward pass runs the host kernels.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    /// Keys [batch, kv_heads, len, head_dim], none before the first forward.
    pub keys: Option<Tensor<4>>,
    /// Values [batch, kv_heads, len, head_dim], none before the first forward.
    pub values: Option<Tensor<4>>,
    /// Keys and values in host memory, for the host kernels.
    pub host: HostKv,
}

/// Keys and values of one decoder layer in host memory, each [batch,
/// kv_heads, capacity, head_dim] with the first `len` slots filled. The
/// capacity grows by doubling, so appending a position copies nothing
/// most of the time.
#[derive(Debug, Clone, Default)]
pub struct HostKv {
    keys: Vec<f32>,
    values: Vec<f32>,
    blocks: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

impl HostKv {
    /// Appends `new` positions of `blocks` (batch x kv_heads) key and value
    /// heads, each given as [blocks, new, head_dim].
    pub fn append(&mut self, keys: &[f32], values: &[f32], blocks: usize, new: usize, head_dim: usize) {
        if self.capacity == 0 {
            (self.blocks, self.head_dim) = (blocks, head_dim);
        }
        assert!(blocks == self.blocks && head_dim == self.head_dim, "host key/value cache: shape changed between steps");
        if self.len + new > self.capacity {
            let capacity = (2 * self.capacity).max(self.len + new).max(64);
            let grow = |old: &[f32]| {
                let mut grown = vec![0.0f32; blocks * capacity * head_dim];
                for block in 0..blocks {
                    let filled = &old[block * self.capacity * head_dim..(block * self.capacity + self.len) * head_dim];
                    grown[block * capacity * head_dim..][..filled.len()].copy_from_slice(filled);
                }
                grown
            };
            (self.keys, self.values) = (grow(&self.keys), grow(&self.values));
            self.capacity = capacity;
        }
        for block in 0..blocks {
            let to = (block * self.capacity + self.len) * head_dim..(block * self.capacity + self.len + new) * head_dim;
            let from = block * new * head_dim..(block + 1) * new * head_dim;
            self.keys[to.clone()].copy_from_slice(&keys[from.clone()]);
            self.values[to].copy_from_slice(&values[from]);
        }
        self.len += new;
    }

    /// Replaces the blocks by the given ones, in that order (an index may
    /// repeat, to copy a block).
    pub fn select_blocks(&mut self, blocks: &[usize]) {
        let size = self.capacity * self.head_dim;
        let pick = |from: &[f32]| blocks.iter().flat_map(|&b| from[b * size..(b + 1) * size].iter().copied()).collect::<Vec<f32>>();
        (self.keys, self.values) = (pick(&self.keys), pick(&self.values));
        self.blocks = blocks.len();
    }

    /// Moves every block's filled slots `slots` to the right, zeros in the
    /// slots freed at the front ([`KvCache::pad_front`]).
    fn pad_front(&mut self, slots: usize) {
        let (d, len) = (self.head_dim, self.len);
        let capacity = self.capacity.max(len + slots);
        let shift = |old: &[f32]| {
            let mut moved = vec![0.0f32; self.blocks * capacity * d];
            for block in 0..self.blocks {
                let filled = &old[block * self.capacity * d..(block * self.capacity + len) * d];
                moved[(block * capacity + slots) * d..][..filled.len()].copy_from_slice(filled);
            }
            moved
        };
        (self.keys, self.values) = (shift(&self.keys), shift(&self.values));
        self.capacity = capacity;
        self.len += slots;
    }

    /// Drops every block's first `slots` filled slots ([`KvCache::trim_padding`]).
    fn drop_front(&mut self, slots: usize) {
        let (d, len, capacity) = (self.head_dim, self.len, self.capacity);
        for data in [&mut self.keys, &mut self.values] {
            for block in 0..self.blocks {
                let start = block * capacity * d;
                data.copy_within(start + slots * d..start + len * d, start);
            }
        }
        self.len -= slots;
    }

    /// Forgets the last `drop[b]` filled slots of block b and shortens every
    /// block by `shrink` (the fewest dropped): a block that drops more keeps
    /// its slots moved right by the difference, zeros in front
    /// ([`KvCache::drop_last`]).
    fn drop_last(&mut self, drop: &[usize], shrink: usize) {
        let (d, len, capacity) = (self.head_dim, self.len, self.capacity);
        for (block, &n) in drop.iter().enumerate() {
            let shift = n - shrink;
            if shift == 0 {
                continue;
            }
            for data in [&mut self.keys, &mut self.values] {
                let start = block * capacity * d;
                data.copy_within(start..start + (len - n) * d, start + shift * d);
                data[start..start + shift * d].fill(0.0);
            }
        }
        self.len -= shrink;
    }

    /// Appends the blocks of `other`, which must fill as many slots of the
    /// same head size ([`KvCache::append_rows`]).
    fn append_blocks(&mut self, other: &HostKv) {
        assert!(other.len == self.len && other.head_dim == self.head_dim, "host key/value caches of different lengths or heads");
        let (d, len) = (self.head_dim, self.len);
        let capacity = self.capacity.max(other.capacity);
        let blocks = self.blocks + other.blocks;
        let join = |mine: &[f32], theirs: &[f32]| {
            let mut joined = vec![0.0f32; blocks * capacity * d];
            let filled = (0..self.blocks)
                .map(|b| &mine[b * self.capacity * d..][..len * d])
                .chain((0..other.blocks).map(|b| &theirs[b * other.capacity * d..][..len * d]));
            for (block, slots) in filled.enumerate() {
                joined[block * capacity * d..][..len * d].copy_from_slice(slots);
            }
            joined
        };
        (self.keys, self.values) = (join(&self.keys, &other.keys), join(&self.values, &other.values));
        (self.blocks, self.capacity) = (blocks, capacity);
    }

    /// Keys [blocks, capacity, head_dim].
    pub fn keys(&self) -> &[f32] {
        &self.keys
    }

    /// Values [blocks, capacity, head_dim].
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Slots allocated per block.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl LayerKv {
    /// Attention of new positions through the host kernels: appends their
    /// keys and values (`new`, rotary embedding applied) to [`LayerKv::host`]
    /// and returns the context [batch * new, heads * head_dim] of
    /// [`kernels::cached_attention`].
    pub fn attend_host(&mut self, new: &NewHeads, shape: AttentionShape, visible: &[Range<usize>], score: ScoreScale) -> Vec<f32> {
        self.move_to_host();
        self.host.append(&new.keys, &new.values, shape.batch * shape.kv_heads, shape.seq, shape.head_dim);
        kernels::cached_attention(&new.queries, self.host.keys(), self.host.values(), self.host.capacity(), shape, visible, score)
    }

    /// Moves keys and values held as tensors into [`LayerKv::host`] (a
    /// cache filled by tensor ops and continued by the host kernels).
    pub fn move_to_host(&mut self) {
        if let (Some(keys), Some(values)) = (self.keys.take(), self.values.take()) {
            let [batch, kv_heads, len, head_dim] = keys.dims();
            let read = |t: Tensor<4>| t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 keys and values");
            self.host = HostKv::default();
            self.host.append(&read(keys), &read(values), batch * kv_heads, len, head_dim);
        }
    }

    /// Moves keys and values held in [`LayerKv::host`] into tensors on
    /// `device` (a cache filled by the host kernels and continued by tensor ops).
    pub fn move_to_tensors(&mut self, batch: usize, device: &Device) {
        if self.host.is_empty() {
            return;
        }
        let host = std::mem::take(&mut self.host);
        let (blocks, len, d) = (host.blocks, host.len, host.head_dim);
        let filled = |values: &[f32]| -> Tensor<4> {
            let data: Vec<f32> =
                (0..blocks).flat_map(|b| values[b * host.capacity * d..(b * host.capacity + len) * d].iter().copied()).collect();
            Tensor::from_data(TensorData::new(data, [batch, blocks / batch, len, d]), device)
        };
        self.keys = Some(filled(&host.keys));
        self.values = Some(filled(&host.values));
    }

    /// Inserts `slots` empty slots before every row's first
    /// ([`KvCache::pad_front`]).
    fn pad_front(&mut self, slots: usize) {
        if !self.host.is_empty() {
            self.host.pad_front(slots);
        }
        for tensor in [&mut self.keys, &mut self.values] {
            if let Some(t) = tensor.take() {
                let [batch, heads, _, d] = t.dims();
                let zeros = Tensor::<4>::zeros([batch, heads, slots, d], &t.device());
                *tensor = Some(Tensor::cat(vec![zeros, t], 2));
            }
        }
    }

    /// Drops every row's first `slots` slots ([`KvCache::trim_padding`]).
    fn drop_front(&mut self, slots: usize) {
        if !self.host.is_empty() {
            self.host.drop_front(slots);
        }
        for tensor in [&mut self.keys, &mut self.values] {
            if let Some(t) = tensor.take() {
                let len = t.dims()[2];
                *tensor = Some(t.narrow(2, slots, len - slots));
            }
        }
    }

    /// Forgets the last `drop[r]` slots of row r ([`KvCache::drop_last`]).
    fn drop_last(&mut self, drop: &[usize], shrink: usize) {
        if !self.host.is_empty() {
            let per_row = self.host.blocks / drop.len();
            let blocks: Vec<usize> = drop.iter().flat_map(|&n| std::iter::repeat_n(n, per_row)).collect();
            self.host.drop_last(&blocks, shrink);
        }
        for tensor in [&mut self.keys, &mut self.values] {
            if let Some(t) = tensor.take() {
                let [_, heads, len, d] = t.dims();
                let rows = drop
                    .iter()
                    .enumerate()
                    .map(|(r, &n)| {
                        let kept = t.clone().narrow(0, r, 1).narrow(2, 0, len - n);
                        match n - shrink {
                            0 => kept,
                            shift => Tensor::cat(vec![Tensor::zeros([1, heads, shift, d], &t.device()), kept], 2),
                        }
                    })
                    .collect();
                *tensor = Some(Tensor::cat(rows, 0));
            }
        }
    }

    /// Appends the rows of `other`, which holds as many slots
    /// ([`KvCache::append_rows`]); both move to host memory where either is there.
    fn append_rows(&mut self, mut other: LayerKv) {
        if !self.host.is_empty() || !other.host.is_empty() {
            self.move_to_host();
            other.move_to_host();
            self.host.append_blocks(&other.host);
            return;
        }
        for (mine, theirs) in [(&mut self.keys, other.keys), (&mut self.values, other.values)] {
            *mine = match (mine.take(), theirs) {
                (Some(a), Some(b)) => Some(Tensor::cat(vec![a, b], 0)),
                _ => panic!("appending the rows of a layer cache that holds no keys and values"),
            };
        }
    }

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

    /// Replaces the rows of the batch by the given ones, in that order, with
    /// their keys, values and padding: dropping rows that finished
    /// generating stops their cost, and repeating a row lets samples of one
    /// prompt share its prefill. What a row computes does not change.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let batch = self.batch();
        assert!(rows.iter().all(|&r| r < batch), "rows to select {rows:?} from a batch of {batch}");
        for layer in &mut self.layers {
            if !layer.host.is_empty() {
                let per_row = layer.host.blocks / batch;
                let blocks: Vec<usize> = rows.iter().flat_map(|&r| r * per_row..(r + 1) * per_row).collect();
                layer.host.select_blocks(&blocks);
            }
            for tensor in [&mut layer.keys, &mut layer.values] {
                if let Some(t) = tensor.take() {
                    let device = t.device();
                    let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                    let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &device);
                    *tensor = Some(t.select(0, index));
                }
            }
        }
        self.padding = rows.iter().map(|&r| self.padding[r]).collect();
    }

    /// Appends the rows of `other`, a cache of the same model, after this
    /// one's (rows that join a batch already decoding). The cache holding
    /// fewer slots is first left-padded to the other's length, which changes
    /// no row's positions or visible keys, so what each row computes does not
    /// change.
    pub fn append_rows(&mut self, mut other: KvCache) -> Result<(), ModelError> {
        if other.layers.len() != self.layers.len() {
            return Err(ModelError::Input(format!("joining caches of {} and {} layers", self.layers.len(), other.layers.len())));
        }
        if self.is_empty() || other.is_empty() {
            return Err(ModelError::Input("joining caches: both must hold at least one step".into()));
        }
        let len = self.len.max(other.len);
        self.pad_front(len - self.len);
        other.pad_front(len - other.len);
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            mine.append_rows(theirs);
        }
        self.padding.extend(other.padding);
        Ok(())
    }

    /// Inserts `slots` padding slots before every row's first.
    fn pad_front(&mut self, slots: usize) {
        if slots == 0 {
            return;
        }
        for layer in &mut self.layers {
            layer.pad_front(slots);
        }
        self.padding.iter_mut().for_each(|p| *p += slots);
        self.len += slots;
    }

    /// Drops the leading slots that are padding in every row (left behind by
    /// rows that finished), so the cache holds no more slots than its
    /// longest row needs. What each row computes does not change.
    pub fn trim_padding(&mut self) {
        let slots = self.padding.iter().copied().min().unwrap_or(0);
        if slots == 0 {
            return;
        }
        for layer in &mut self.layers {
            layer.drop_front(slots);
        }
        self.padding.iter_mut().for_each(|p| *p -= slots);
        self.len -= slots;
    }

    /// Forgets the last `drop[r]` slots of each row r, as if the steps that
    /// filled them had not run: the tokens of a draft that decoding did not
    /// keep. The cache shrinks by the fewest dropped; a row that drops more
    /// has its slots moved right and its padding grown by the difference,
    /// which changes none of its positions or visible keys, so what it
    /// computes does not change. Each row must keep a real token.
    pub fn drop_last(&mut self, drop: &[usize]) -> Result<(), ModelError> {
        if drop.len() != self.batch() {
            return Err(ModelError::Input(format!("the cache holds {} rows; {} were given slots to drop", self.batch(), drop.len())));
        }
        for (r, (&n, &pad)) in drop.iter().zip(&self.padding).enumerate() {
            if n + pad >= self.len {
                return Err(ModelError::Input(format!(
                    "row {r} holds {} slots of which {pad} are padding: dropping its last {n} would leave no real token",
                    self.len
                )));
            }
        }
        let shrink = drop.iter().copied().min().unwrap_or(0);
        for layer in &mut self.layers {
            layer.drop_last(drop, shrink);
        }
        for (pad, &n) in self.padding.iter_mut().zip(drop) {
            *pad += n - shrink;
        }
        self.len -= shrink;
        Ok(())
    }

    /// Records that `new` slots were appended to every layer.
    pub fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Rotary position of each new slot, `[batch][new]`: slot j of row b is at
    /// position `j - padding[b]` (padding slots at 0).
    pub fn positions(&self, new: usize) -> Vec<Vec<usize>> {
        self.padding.iter().map(|&p| (self.len..self.len + new).map(|j| j.saturating_sub(p)).collect()).collect()
    }

    /// The key slots each new slot may look at, per row then new slot
    /// ([batch * new]): the same as [`KvCache::mask`] leaves visible, which
    /// is always one contiguous range.
    pub fn visible(&self, new: usize, window: Option<usize>) -> Vec<std::ops::Range<usize>> {
        let mut ranges = Vec::with_capacity(self.batch() * new);
        for &pad in &self.padding {
            for i in 0..new {
                let q = self.len + i;
                let start = if q >= pad { window.map_or(pad, |w| pad.max((q + 1).saturating_sub(w))) } else { 0 };
                ranges.push(start..q + 1);
            }
        }
        ranges
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

    use testkit::cpu;

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
    fn visible_ranges_are_what_the_mask_leaves_open() {
        for (padding, filled, new, window) in [(vec![0, 2], 0, 4, None), (vec![3, 0], 4, 1, Some(2)), (vec![1], 2, 3, Some(3))] {
            let mut cache = KvCache::new(1, padding.clone());
            cache.advance(filled);
            let mask = cache.mask(new, 1, window, &cpu()).into_data().try_into_vec::<bool>().unwrap();
            let total = filled + new;
            for (row, range) in cache.visible(new, window).iter().enumerate() {
                let open: Vec<usize> = (0..total).filter(|&k| !mask[row * total + k]).collect();
                assert_eq!(open, range.clone().collect::<Vec<_>>(), "padding {padding:?}, slot row {row}");
            }
        }
    }

    #[test]
    fn host_kv_keeps_every_block_in_order_as_it_grows() {
        let mut kv = HostKv::default();
        // Two blocks of head_dim 1; value = 100 * block + position.
        for start in (0..70).step_by(7) {
            let keys: Vec<f32> = (0..2).flat_map(|b| (start..start + 7).map(move |p| (100 * b + p) as f32)).collect();
            kv.append(&keys, &keys, 2, 7, 1);
        }
        assert_eq!(kv.len(), 70);
        assert!(kv.capacity() >= 70);
        for b in 0..2 {
            let stored: Vec<f32> = kv.keys()[b * kv.capacity()..b * kv.capacity() + 70].to_vec();
            assert_eq!(stored, (0..70).map(|p| (100 * b + p) as f32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn selected_rows_keep_their_keys_values_and_padding() {
        let mut cache = KvCache::new(1, vec![0, 1, 2]);
        // Three rows of two kv heads (head_dim 1): value = 10 * row + head, two slots.
        let keys: Vec<f32> = (0..3).flat_map(|r| (0..2).flat_map(move |h| [10.0 * r as f32 + h as f32; 2])).collect();
        cache.layers[0].host.append(&keys, &keys, 6, 2, 1);
        let tensor = Tensor::<4>::from_data(TensorData::new(keys.clone(), [3, 2, 2, 1]), &cpu());
        cache.layers[0].keys = Some(tensor.clone());
        cache.layers[0].values = Some(tensor);
        cache.advance(2);
        cache.select_rows(&[2, 0, 2]);
        assert_eq!(cache.padding(), &[2, 0, 2]);
        let host = &cache.layers[0].host;
        let first_slots: Vec<f32> = (0..6).map(|b| host.values()[b * host.capacity()]).collect();
        assert_eq!(first_slots, vec![20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
        let kept = cache.layers[0].keys.clone().unwrap().into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(kept, vec![20.0, 20.0, 21.0, 21.0, 0.0, 0.0, 1.0, 1.0, 20.0, 20.0, 21.0, 21.0]);
    }

    #[test]
    fn steps_must_match_the_batch_and_leave_a_real_token() {
        let cache = KvCache::new(1, vec![0, 3]);
        assert!(cache.check_step(3, 1).is_err());
        assert!(cache.check_step(2, 3).is_err());
        assert!(cache.check_step(2, 4).is_ok());
    }
}
