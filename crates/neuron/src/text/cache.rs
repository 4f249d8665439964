//! What the text model carries from one forward to the next, mirroring the `DynamicCache` that
//! transformers builds for Qwen3.5 (`cache_utils.py`: one `LinearAttentionAndFullAttentionLayer`
//! per decoder layer, of which a Gated DeltaNet layer uses the conv and recurrent states and an
//! attention layer the keys and values) plus `Qwen3_5Model.rope_deltas`.
//!
//! The states are written by the layers ([`super::gated_delta_net`], [`super::attention`]); this
//! module only holds them, counts the tokens seen and says where the next token's position is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use candle_core::Tensor;

use crate::config::{LayerType, TextConfig};
use crate::taps::Taps;
use contract::{Stage, Tap};

/// The state of a Gated DeltaNet layer after the tokens seen (`LinearAttentionLayer`'s
/// `conv_states` and `recurrent_states`, batch dimension dropped).
#[derive(Debug, Clone)]
pub struct LinearState {
    /// The last `kernel` columns of the pre-convolution `mixed_qkv` (the `in_proj_qkv` output),
    /// zeros before the first token: `[conv_dim, kernel]`.
    pub conv: Tensor,
    /// The delta rule's state: `[v_heads, d_k, d_v]`.
    pub recurrent: Tensor,
}

/// The keys and values of an attention layer for every token seen (`DynamicLayer`'s `keys`
/// and `values`): `[kv_heads, seq, head_dim]`, keys after q/k norm and rotary.
///
/// `key` and `value` are views of the first `seq` positions of preallocated buffers (a
/// [`Room`]), so that appending a token writes its keys and values in place instead of copying
/// the whole cache (`Tensor::cat` did, every decode step). Each head's rows stay contiguous, so
/// attention reads them as it read the concatenated tensors. A position is written once and never
/// again, so a view handed out (a tap, a snapshot) keeps its values whatever happens after.
#[derive(Debug, Clone)]
pub struct KvState {
    pub key: Tensor,
    pub value: Tensor,
    /// The buffers `key` and `value` are views of; shared by the clones of this state.
    room: Option<Arc<Room>>,
}

/// Preallocated keys and values: `[kv_heads, capacity, head_dim]` each, and how many positions
/// of them have been written. The states that share it (a cache and its snapshots) may each
/// extend it in place only from its end, that is only the one whose length is `filled`; any
/// other copies what it sees into a room of its own first (copy on write). So a clone costs
/// nothing and the clones stay independent.
#[derive(Debug)]
struct Room {
    key: Tensor,
    value: Tensor,
    filled: AtomicUsize,
}

impl Room {
    /// A room for `needed` positions and then some: a quarter more, at least 256 and at most
    /// 4096 positions, so that decoding reallocates (and copies) rarely, and a long prompt does
    /// not reserve a quarter of itself again without bound.
    fn for_positions(like: &Tensor, needed: usize) -> Result<Room> {
        let (heads, _, head_dim) = like.dims3()?;
        let capacity = needed + (needed / 4).clamp(256, 4096);
        let zeros = || Tensor::zeros((heads, capacity, head_dim), like.dtype(), like.device());
        Ok(Room { key: zeros()?, value: zeros()?, filled: AtomicUsize::new(0) })
    }

    fn capacity(&self) -> usize {
        self.key.dim(1).unwrap_or(0)
    }
}

impl KvState {
    /// The keys and values of the first tokens: key and value `[kv_heads, seq, head_dim]`.
    pub fn new(key: &Tensor, value: &Tensor) -> Result<KvState> {
        let mut state = KvState { key: key.narrow(1, 0, 0)?, value: value.narrow(1, 0, 0)?, room: None };
        state.append(key, value)?;
        Ok(state)
    }

    /// The number of positions held.
    pub fn len(&self) -> usize {
        self.key.dim(1).unwrap_or(0)
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the keys and values of the next tokens, key and value `[kv_heads, n, head_dim]`
    /// (`DynamicLayer.update`): in place when this state may extend its room (see [`Room`]),
    /// else into a new room holding a copy of what this state sees.
    pub fn append(&mut self, key: &Tensor, value: &Tensor) -> Result<()> {
        let (len, n) = (self.len(), key.dim(1)?);
        ensure!(
            key.dims() == value.dims() && key.dim(0)? == self.key.dim(0)? && key.dim(2)? == self.key.dim(2)?,
            "appending keys {:?} and values {:?} to a cache of {:?}",
            key.dims(),
            value.dims(),
            self.key.dims()
        );
        let (key, value) = (key.contiguous()?, value.contiguous()?);
        let in_place = self.room.as_ref().filter(|room| {
            self.views(room)
                && len + n <= room.capacity()
                && room.filled.compare_exchange(len, len + n, Ordering::AcqRel, Ordering::Acquire).is_ok()
        });
        let room = match in_place {
            Some(room) => room.clone(),
            None => {
                let room = Arc::new(Room::for_positions(&key, len + n)?);
                if len > 0 {
                    room.key.slice_set(&self.key.contiguous()?, 1, 0)?;
                    room.value.slice_set(&self.value.contiguous()?, 1, 0)?;
                }
                room.filled.store(len + n, Ordering::Release);
                room
            }
        };
        room.key.slice_set(&key, 1, len)?;
        room.value.slice_set(&value, 1, len)?;
        self.key = room.key.narrow(1, 0, len + n)?;
        self.value = room.value.narrow(1, 0, len + n)?;
        self.room = Some(room);
        Ok(())
    }

    /// Whether `key` and `value` are still this room's views from position 0 (a test may have
    /// replaced one).
    fn views(&self, room: &Room) -> bool {
        let from_start = |view: &Tensor, whole: &Tensor| {
            same_storage(view, whole)
                && view.layout().start_offset() == whole.layout().start_offset()
                && view.stride() == whole.stride()
        };
        from_start(&self.key, &room.key) && from_start(&self.value, &room.value)
    }

    /// Positions the buffers can hold before the next append reallocates (for tests and memory
    /// accounting): the room's capacity, or the length when there is no room.
    pub fn capacity(&self) -> usize {
        self.room.as_ref().map_or(self.len(), |room| room.capacity())
    }
}

/// Whether two tensors are views of one buffer (candle's own test is private).
fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    // One read guard at a time: the address of the storage behind it is what identifies it.
    let at = |t: &Tensor| &*t.storage_and_layout().0 as *const candle_core::Storage;
    at(a) == at(b)
}

/// One decoder layer's state; `None` before its first forward (the reference's
/// `has_previous_state == False` and an empty `DynamicLayer`).
#[derive(Debug, Clone)]
pub enum LayerState {
    Linear(Option<LinearState>),
    Full(Option<KvState>),
}

/// The cache of one sequence: every layer's state, the number of tokens seen, the rope delta,
/// and how many of the first tokens were padding (a row of a left-padded batch).
///
/// A clone is a snapshot: the linear states are tensors that a forward replaces and never writes
/// in place, and the keys and values are written in place only past every clone's end (see
/// [`KvState`]), so the clone and the original go their own ways from then on (prefix caching
/// restores a clone; `tests` checks the independence).
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<LayerState>,
    seen: usize,
    rope_delta: i64,
    padding: usize,
}

impl Cache {
    /// An empty cache for a model of `layer_types` (no tokens seen, rope delta 0).
    pub fn new(layer_types: &[LayerType]) -> Cache {
        let layers = layer_types
            .iter()
            .map(|t| match t {
                LayerType::LinearAttention => LayerState::Linear(None),
                LayerType::FullAttention => LayerState::Full(None),
            })
            .collect();
        Cache { layers, seen: 0, rope_delta: 0, padding: 0 }
    }

    /// An empty cache for the text model of `cfg`.
    pub fn for_config(cfg: &TextConfig) -> Cache {
        Cache::new(&cfg.layer_types())
    }

    /// The number of tokens seen (`get_seq_length`), padding included.
    pub fn len(&self) -> usize {
        self.seen
    }

    /// How many of the first tokens were left padding, masked from attention and zeroed before
    /// the Gated DeltaNet layers (0 for a sequence on its own).
    pub fn padding(&self) -> usize {
        self.padding
    }

    /// Sets the left padding of the row (the prefill of a left-padded batch does, before it runs).
    pub fn set_padding(&mut self, padding: usize) {
        self.padding = padding;
    }

    /// Whether no token was seen yet.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// The number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `rope_deltas` of `Qwen3_5Model.get_rope_index`: the prompt's largest position + 1 − its
    /// length (negative after an image, whose tokens share positions; 0 for text alone).
    pub fn rope_delta(&self) -> i64 {
        self.rope_delta
    }

    /// Sets the rope delta (the prefill does, from the whole prompt's positions).
    pub fn set_rope_delta(&mut self, rope_delta: i64) {
        self.rope_delta = rope_delta;
    }

    /// The positions of the next `n` tokens after the prompt, the same on the three axes:
    /// `tokens seen − padding + i + rope delta` (`compute_3d_position_ids` once a cache exists,
    /// where `attention_mask.cumsum(-1) − 1` counts the real tokens, and
    /// `_prepare_position_ids_for_generation`). The first generated token is at the prompt's
    /// largest position + 1.
    pub fn next_positions(&self, n: usize) -> [Vec<i64>; 3] {
        let real = self.seen - self.padding;
        let row: Vec<i64> = (0..n).map(|i| (real + i) as i64 + self.rope_delta).collect();
        [row.clone(), row.clone(), row]
    }

    /// Layer `i`'s state.
    pub fn layer(&self, i: usize) -> Option<&LayerState> {
        self.layers.get(i)
    }

    /// Every state by its tap, in the tap contract's order (by layer; conv before recurrent,
    /// key before value): `cache.0.conv`, `cache.0.recurrent`, …, `cache.3.key`, …
    pub fn states(&self) -> Vec<(Tap, Tensor)> {
        let mut states = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            match layer {
                LayerState::Linear(Some(s)) => {
                    states.push((Stage::CacheConv.at(i), s.conv.clone()));
                    states.push((Stage::CacheRecurrent.at(i), s.recurrent.clone()));
                }
                LayerState::Full(Some(s)) => {
                    states.push((Stage::CacheKey.at(i), s.key.clone()));
                    states.push((Stage::CacheValue.at(i), s.value.clone()));
                }
                LayerState::Linear(None) | LayerState::Full(None) => {}
            }
        }
        states
    }

    /// Records every state as a tap (`cache.{i}.*`).
    pub fn record(&self, taps: &mut Taps) {
        if taps.enabled() {
            for (tap, tensor) in self.states() {
                taps.record(tap, &tensor);
            }
        }
    }

    /// Records the states of the rows of a batch as taps with a leading batch axis
    /// (`cache.{i}.*`: [batch, …]); the rows hold the same layers and lengths.
    pub fn record_batch(caches: &[Cache], taps: &mut Taps) -> Result<()> {
        if !taps.enabled() || caches.is_empty() {
            return Ok(());
        }
        let rows: Vec<Vec<(Tap, Tensor)>> = caches.iter().map(Cache::states).collect();
        for (i, (tap, _)) in rows[0].iter().enumerate() {
            let states: Vec<&Tensor> = rows.iter().map(|r| &r[i].1).collect();
            taps.record(*tap, &Tensor::stack(&states, 0)?);
        }
        Ok(())
    }

    /// Layer `i`'s state for the layer to read and replace (and for tests to perturb).
    pub fn layer_mut(&mut self, i: usize) -> Result<&mut LayerState> {
        let n = self.layers.len();
        match self.layers.get_mut(i) {
            Some(state) => Ok(state),
            None => bail!("the cache has {n} layers, the model has more (layer {i})"),
        }
    }

    /// Counts `n` more tokens as seen (after every layer has stored them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.seen += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_positions_continue_from_the_cache_length_shifted_by_the_rope_delta() {
        let mut cache = Cache::new(&[LayerType::LinearAttention, LayerType::FullAttention]);
        cache.advance(42);
        cache.set_rope_delta(-27);
        let p = cache.next_positions(2);
        assert_eq!(p, [vec![15, 16], vec![15, 16], vec![15, 16]], "positions of the tokens after 42 with delta −27");
        assert_eq!((cache.len(), cache.num_layers()), (42, 2));
    }

    #[test]
    fn positions_after_a_padded_prompt_count_only_its_real_tokens() {
        let mut cache = Cache::new(&[LayerType::FullAttention]);
        cache.set_padding(5);
        cache.advance(12);
        cache.set_rope_delta(-2);
        assert_eq!(cache.next_positions(1), [vec![5], vec![5], vec![5]], "7 real tokens, delta −2");
        assert_eq!((cache.len(), cache.padding()), (12, 5));
    }

    /// Keys or values of one token: [1 head, 1, 1 dim] holding v.
    fn kv(v: f32) -> Tensor {
        Tensor::new(&[v], &candle_core::Device::Cpu).unwrap().reshape((1, 1, 1)).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn a_restored_snapshot_is_independent_of_the_cache_it_was_taken_from() {
        let t = |v: f32| Tensor::new(&[v], &candle_core::Device::Cpu).unwrap();
        let mut cache = Cache::new(&[LayerType::LinearAttention, LayerType::FullAttention]);
        *cache.layer_mut(0).unwrap() = LayerState::Linear(Some(LinearState { conv: t(1.0), recurrent: t(2.0) }));
        *cache.layer_mut(1).unwrap() = LayerState::Full(Some(KvState::new(&kv(3.0), &kv(4.0)).unwrap()));
        cache.advance(7);
        cache.set_rope_delta(-3);
        let snapshot = cache.clone();
        // The original goes on: a layer replaces its states, the length and delta move.
        *cache.layer_mut(0).unwrap() = LayerState::Linear(Some(LinearState { conv: t(10.0), recurrent: t(20.0) }));
        if let Ok(LayerState::Full(Some(state))) = cache.layer_mut(1) {
            state.append(&kv(30.0), &kv(40.0)).unwrap();
        }
        cache.advance(2);
        cache.set_rope_delta(5);
        let values = |c: &Cache| -> Vec<Vec<f32>> { c.states().iter().map(|(_, s)| flat(s)).collect() };
        assert_eq!(values(&snapshot), [vec![1.0], vec![2.0], vec![3.0], vec![4.0]], "the snapshot kept its states");
        assert_eq!((snapshot.len(), snapshot.rope_delta()), (7, -3), "and its length and rope delta");
        assert_eq!(values(&cache), [vec![10.0], vec![20.0], vec![3.0, 30.0], vec![4.0, 40.0]], "the original moved on");
        // The snapshot, restored, appends its own next token where the original wrote its own:
        // it copies what it sees first, and neither sees the other's token.
        let mut restored = snapshot.clone();
        if let Ok(LayerState::Full(Some(state))) = restored.layer_mut(1) {
            state.append(&kv(-3.0), &kv(-4.0)).unwrap();
        }
        assert_eq!(values(&restored)[2..], [vec![3.0, -3.0], vec![4.0, -4.0]], "the restored snapshot's own token");
        assert_eq!(values(&cache)[2..], [vec![3.0, 30.0], vec![4.0, 40.0]], "the original's token, untouched");
        assert_eq!(values(&snapshot)[2..], [vec![3.0], vec![4.0]], "the snapshot itself, untouched");
    }

    #[test]
    fn appending_writes_in_place_into_the_preallocated_room_and_old_views_keep_their_values() {
        let mut state = KvState::new(&kv(1.0), &kv(-1.0)).unwrap();
        let capacity = state.capacity();
        assert!(capacity >= 257, "a room for the first token and 256 more, not {capacity}");
        let first_view = state.key.clone();
        for i in 2..=capacity {
            state.append(&kv(i as f32), &kv(-(i as f32))).unwrap();
        }
        assert_eq!(state.capacity(), capacity, "no reallocation until the room is full");
        assert!(same_storage(&state.key, &first_view), "the keys were written into the same buffer");
        assert_eq!(flat(&first_view), [1.0], "a view taken earlier still shows its one position");
        let expected: Vec<f32> = (1..=capacity).map(|i| i as f32).collect();
        assert_eq!(flat(&state.key), expected, "every key in order");
        assert_eq!(flat(&state.value), expected.iter().map(|v| -v).collect::<Vec<_>>(), "every value in order");
        state.append(&kv(0.5), &kv(-0.5)).unwrap();
        assert!(state.capacity() > capacity + 1 && !same_storage(&state.key, &first_view), "a full room is replaced");
        assert_eq!(flat(&state.key)[capacity - 1..], [capacity as f32, 0.5], "and the copy keeps every key");
    }

    #[test]
    fn a_state_whose_keys_were_replaced_appends_to_a_copy_of_what_it_holds() {
        let mut state = KvState::new(&kv(1.0), &kv(-1.0)).unwrap();
        state.key = (&state.key * 10.0).unwrap();
        state.append(&kv(2.0), &kv(-2.0)).unwrap();
        assert_eq!((flat(&state.key), flat(&state.value)), (vec![10.0, 2.0], vec![-1.0, -2.0]));
    }

    #[test]
    fn a_fresh_cache_has_one_empty_state_per_layer_of_its_kind() {
        let cache = Cache::new(&[LayerType::LinearAttention, LayerType::FullAttention]);
        assert!(matches!(cache.layer(0), Some(LayerState::Linear(None))), "layer 0: {:?}", cache.layer(0));
        assert!(matches!(cache.layer(1), Some(LayerState::Full(None))), "layer 1: {:?}", cache.layer(1));
        assert!(cache.states().is_empty() && cache.is_empty());
    }
}
