import torch

from lth.core.batches import collate, evaluation_order, training_order


def test_collate_pads_each_key_with_its_own_value_and_drops_bookkeeping():
    feats = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "labels": [-100, 6, -100],
              "offsets": [None, (0, 2), None], "example_index": 0},
             {"input_ids": [5], "token_type_ids": [0], "labels": [9], "offsets": [None], "example_index": 1}]
    batch = collate(feats, pad_id=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, -100], [9, -100, -100]]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}


def test_collate_stacks_scalar_targets_with_their_dtype():
    cls = collate([{"input_ids": [1, 2], "labels": 1}, {"input_ids": [1], "labels": 0}], 0)
    assert cls["labels"].dtype == torch.long and cls["labels"].tolist() == [1, 0]
    reg = collate([{"input_ids": [1], "labels": 0.5}, {"input_ids": [1], "labels": 4.0}], 0)
    assert reg["labels"].dtype == torch.float
    qa = collate([{"input_ids": [1, 2], "start_positions": 1, "end_positions": 1}], 0)
    assert qa["start_positions"].tolist() == [1] and qa["end_positions"].tolist() == [1]


def test_training_order_covers_every_example_once_groups_lengths_and_is_seeded():
    lengths = [(i * 37) % 101 for i in range(1000)]
    order = training_order(lengths, 10, seed=1, epoch=0)
    assert sorted(i for b in order for i in b) == list(range(1000))
    assert order == training_order(lengths, 10, seed=1, epoch=0)
    assert order != training_order(lengths, 10, seed=1, epoch=1)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in order) / len(order)
    assert spread < 10, "batches should hold similar lengths"  # random batches would spread ~80


def test_evaluation_order_longest_first_and_complete():
    lengths = [3, 9, 1, 7]
    assert evaluation_order(lengths, 3) == [[1, 3, 0], [2]]
