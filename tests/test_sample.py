import pytest
import torch

from changescope.data.sample import collate, validate_sample


def _sample(h=8, w=8, **extra):
    s = {
        "id": "x",
        "image": torch.rand(2, 3, h, w),
        "mask": torch.zeros(h, w, dtype=torch.long),
        "captions": ["a road is built"],
        "changed": True,
    }
    s.update(extra)
    return s


def test_validate_accepts_contract_and_names_bad_key():
    validate_sample(_sample())
    with pytest.raises(ValueError, match="image"):
        validate_sample(_sample(image=torch.rand(3, 8, 8)))
    with pytest.raises(ValueError, match="mask"):
        validate_sample(_sample(mask=torch.zeros(4, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="changed"):
        validate_sample(_sample(changed=1))
    with pytest.raises(ValueError, match="boxes"):
        validate_sample(_sample(boxes=torch.zeros(4)))


def test_collate_stacks_tensors_and_lists_the_rest():
    batch = collate([_sample(), _sample(changed=False, captions=["there is no difference"])])
    assert batch["image"].shape == (2, 2, 3, 8, 8)
    assert batch["mask"].shape == (2, 8, 8)
    assert batch["changed"].tolist() == [True, False]
    assert batch["captions"][1] == ["there is no difference"]
    assert batch["id"] == ["x", "x"]


def test_collate_refuses_mixed_keys_and_sizes():
    with pytest.raises(ValueError, match="different keys"):
        collate([_sample(), {k: v for k, v in _sample().items() if k != "mask"}])
    with pytest.raises(ValueError, match="cannot stack 'image'"):
        collate([_sample(), _sample(h=4, w=4)])


def _sequence(dates=4, h=8, w=8):
    return _sample(
        h,
        w,
        image=torch.rand(dates, 3, h, w),
        interval_masks=torch.zeros(dates - 1, h, w, dtype=torch.long),
        times=[f"201{t}-06-01" for t in range(dates)],
    )


def test_interval_masks_are_checked_and_stacked():
    validate_sample(_sequence())
    with pytest.raises(ValueError, match=r"interval_masks'\] is \(4, 8, 8\); \[T-1, H, W\] is \(3, 8, 8\)"):
        validate_sample(_sequence() | {"interval_masks": torch.zeros(4, 8, 8, dtype=torch.long)})
    with pytest.raises(ValueError, match="interval_masks'] must be a long tensor"):
        validate_sample(_sequence() | {"interval_masks": torch.zeros(3, 8, 8)})
    batch = collate([_sequence(), _sequence()])
    assert batch["interval_masks"].shape == (2, 3, 8, 8) and batch["image"].shape == (2, 4, 3, 8, 8)
    with pytest.raises(ValueError, match="cannot stack 'image'"):  # batches hold sequences of one T
        collate([_sequence(), _sequence(dates=3)])
