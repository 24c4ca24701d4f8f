"""Roofs pasted into real pairs (issue 12): the footprint bank, the pasted samples, and mix files."""

from pathlib import Path

import pytest
import torch
from conftest import REALDATA  # noqa: E402
from data import make_cd_fixtures as cx
from test_real_change import binary_folder

from changescope.data.paste import FootprintBank, PastedChange
from changescope.data.readers.base import PairEntry
from changescope.data.sample import BINARY_CLASSES, IGNORE_INDEX
from changescope.errors import DataError


class FlatPairs(torch.utils.data.Dataset):
    """Binary change pairs of one dark colour, no change; the top rows unlabelled."""

    classes, no_change_sentences = BINARY_CLASSES, ()

    def __init__(self, n=3, size=64, gsd=0.5, window_scale=None):
        self.size, self.gsd = size, gsd
        extra = {"window": (window_scale, 0, 0)} if window_scale else {}
        self.entries = [PairEntry(f"p{i}", "train", (), [], extra=dict(extra)) for i in range(n)]

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        mask = torch.zeros(self.size, self.size, dtype=torch.long)
        mask[:6] = IGNORE_INDEX
        image = torch.full((2, 3, self.size, self.size), 0.1)
        image[1] += 0.01 * index  # dates differ a little, as real ones do
        return {"id": self.entries[index].id, "image": image, "mask": mask, "gsd": self.gsd}


@pytest.fixture(scope="module")
def xbd(tmp_path_factory):
    return cx.make_xbd(tmp_path_factory.mktemp("xbd"))


@pytest.fixture(scope="module")
def bank(xbd):
    return FootprintBank.from_dataset(xbd, "train", min_pixels=10)


def test_the_bank_holds_each_roof_of_the_training_pre_images(xbd, bank):
    # each damaged fixture pair has five roofs, one of 8 px (dropped below 10); the undamaged one two;
    # the val and test pairs give none
    assert len(bank) == 4 * 4 + 2 and bank.gsd == 0.5
    assert {p.area for p in bank.pieces} == {24, 36, 30}
    for piece in bank.pieces:  # ground around each roof (two pixels, fewer at the image's edge)
        assert piece.rgb.shape[1:] == piece.mask.shape and piece.rgb.dtype == torch.float32
        ring = (piece.mask[0], piece.mask[-1], piece.mask[:, 0], piece.mask[:, -1])
        assert not any(side.any() for side in ring)
    assert len(FootprintBank.from_dataset(xbd, "test", min_pixels=10)) == 4 + 4
    with pytest.raises(DataError, match="no roof of 40 pixels or more in the train footprint masks"):
        FootprintBank.from_dataset(xbd, "train")  # the fixture's roofs are all smaller
    with pytest.raises(DataError, match="xbd release"):
        FootprintBank.from_dataset(xbd / "data" / "xbd" / "train" / "images", "train")


def test_pasted_roofs_are_labelled_where_they_show_and_nothing_else_moves(bank):
    base = FlatPairs()
    pasted = PastedChange(base, bank, per_tile=3, reverse=0.0, copies=2, seed=5)
    assert len(pasted) == 6 and [e.id for e in pasted.entries][2:4] == ["p2+paste0", "p0+paste1"]
    for index in range(len(pasted)):
        sample, source = pasted[index], base[index % 3]
        torch.testing.assert_close(sample["image"][0], source["image"][0])  # the earlier date is as it was
        moved = (sample["image"][1] - source["image"][1]).abs().sum(0) > 0
        new = sample["mask"] == 1
        assert new.any() and sample["changed"] and sample["id"] == pasted.entries[index].id
        assert not (new & ~moved).any()  # labelled change is where the later image changed
        assert (sample["mask"][:6] == IGNORE_INDEX).all()  # unlabelled pixels stay unlabelled
        assert set(sample["mask"].unique().tolist()) <= {0, 1, IGNORE_INDEX}
    torch.testing.assert_close(pasted[4]["image"], pasted[4]["image"])  # the same item, the same paste
    assert not torch.equal(pasted[0]["mask"], pasted[3]["mask"])  # two copies, two pastes
    demolished = PastedChange(base, bank, reverse=1.0)[0]
    torch.testing.assert_close(demolished["image"][1], base[0]["image"][1])
    assert (demolished["image"][0] != base[0]["image"][0]).any()


def test_roofs_are_resampled_to_the_tiles_gsd(bank):
    def area(dataset, **options):
        return sum(int((s["mask"] == 1).sum()) for s in PastedChange(dataset, bank, per_tile=1, **options))

    native = area(FlatPairs(n=6, size=96, gsd=0.5))
    finer = area(FlatPairs(n=6, size=96, gsd=0.25))  # a 0.5 m roof covers four times the pixels
    assert 3 < finer / native < 5
    # samples without a GSD: the source's native GSD, divided by the tile's resampling
    unknown = FlatPairs(n=6, size=96, gsd=None, window_scale=0.5)
    assert area(unknown, gsd=0.25) == native
    assert area(unknown) == native  # none given: the bank's own pixel size


def test_a_mix_pastes_into_its_training_tiles_only(tmp_path, xbd):
    from changescope.data.mix import MixedPairs

    binary_folder(tmp_path / "cd")
    mix = tmp_path / "mix.yaml"
    paste = f"{{objects: {xbd}, min_pixels: 10, per_tile: 2, copies: 2, gsd: 0.5}}"
    sources = f"  - {{path: cd, format: folder}}\n  - {{path: cd, paste: {paste}}}\n"
    mix.write_text(f"tile: 64\nsources:\n{sources}")
    train, val = MixedPairs(mix, "train"), MixedPairs(mix, "val")
    plain = train.parts[0]
    assert len(train) == 3 * len(plain) and "+paste1" in train.entries[-1].id
    assert len(val.parts) == 1 and len(val) and not any("+paste" in e.id for e in val.entries)


@pytest.mark.parametrize(
    "paste, message",
    [
        ("{per_tile: 2}", "needs 'objects'"),
        ("{objects: x, tiles: 2}", r"unknown keys \['tiles'\]"),
        ("{objects: x, copies: 0}", "copies must be an integer >= 1"),
        ("{objects: x, reverse: 2}", r"reverse must be a number in \[0, 1\]"),
        ("{objects: x, gsd: -1}", "gsd must be a positive number"),
    ],
)
def test_a_bad_paste_entry_names_the_mix_and_the_key(tmp_path, paste, message):
    from changescope.data.mix import read_mix

    mix = tmp_path / "mix.yaml"
    mix.write_text(f"sources:\n  - {{path: cd, paste: {paste}}}\n")
    with pytest.raises(DataError, match=message) as err:
        read_mix(mix)
    assert str(mix) in str(err.value) and "sources[0].paste" in str(err.value)


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata (the real labelled pairs) is absent")
def test_the_real_footprint_bank_and_the_paste_mix_read():
    from changescope.data.mix import read_mix

    bank = FootprintBank.from_dataset(REALDATA / "xbd-idabd-dahitra")
    assert len(bank) > 300  # the roofs of the 5 training pre-disaster images
    spec = read_mix(Path(__file__).resolve().parents[1] / "benchmarks" / "mixes" / "realdata_paste.yaml")
    pasted = [s for s in spec["sources"] if s.paste]
    assert len(pasted) == 3 and all(s.paste["objects"].endswith("xbd-idabd-dahitra") for s in pasted)
