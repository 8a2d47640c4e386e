"""Every kind of unit as data: one full row per kind, read by the planner (`plan.py`), the one training path
(`search.Search.run_unit`) and the readers of results (`records.py`). Nothing else tests a unit's kind.

    kind           mask from                       starts from      levels     seeds   waits for         column
    trunk          the search's mask of its level  rewind point     every      search  previous level    imp
    full           all ones                        θ0               dense (0)  others  -                 full
    imp            the search's mask of its level  rewind point     judged     others  level mask        imp
    random-prune   random, the level's sparsity    rewind point     judged     all     -                 its own
    random-reinit  the search's mask of its level  fresh init       judged     all     level mask        its own
    oneshot        magnitudes of θ0                rewind point     judged     all     -                 its own
    standard       magnitudes of its chain         chain's weights  chain      all     previous weights  its own
    transfer       another run's or a file's mask  rewind point     -          all     -                 -
    draw           all ones, pruned as it trains   θ0               -          search  -                 -

`search`: the search itself, whose trained weights give the next level's mask (and, at level 0, a later rewind
point). `draw`: the one fine-tuning of --search gradual, which prunes as it trains and writes every level's mask.
`chain`: keeps its trained weights for its next level, which starts from them (standard pruning). Adding a
kind is one row here and, at most, one small function for its mask (`search.masking`)."""
from __future__ import annotations

from dataclasses import dataclass

REWIND, INIT, REINIT, CHAIN = "rewind", "init", "reinit", "chain"


@dataclass(frozen=True)
class Kind:
    mask: str  # where the mask comes from: a key of search.masking.Masks.SOURCES
    start: str  # REWIND: the rewind point; INIT: θ0 at step 0; REINIT: a fresh init; CHAIN: the chain's weights
    levels: str  # "every" planned level, "dense" (level 0), the "judged" ones, the "chain" up to the highest judged,
    #              or "none" (a transfer is trained at its mask's sparsity)
    seeds: str  # "search" (its own seed), "others" (every seed but the search's: it has that one), or "all"
    needs: str | None = None  # "previous level", "level mask" or "previous weights": what it waits for
    column: str | None = None  # the verdict column its results fill; None: judged in a table of its own
    search: bool = False
    chain: bool = False
    baseline: bool = False  # a choice of --baselines
    teacher: bool = True  # learns from the dense model with --distill (at a pruned level; the dense runs never)


KINDS: dict[str, Kind] = {
    "trunk": Kind("level", REWIND, "every", "search", "previous level", "imp", search=True),
    "full": Kind("dense", INIT, "dense", "others", column="full", teacher=False),
    "imp": Kind("level", REWIND, "judged", "others", "level mask", "imp"),
    "random-prune": Kind("random", REWIND, "judged", "all", column="random-prune", baseline=True),
    "random-reinit": Kind("level", REINIT, "judged", "all", "level mask", "random-reinit", baseline=True),
    "oneshot": Kind("oneshot", REWIND, "judged", "all", column="oneshot", baseline=True),
    "standard": Kind("chain", CHAIN, "chain", "all", "previous weights", "standard", chain=True, baseline=True),
    "transfer": Kind("source", REWIND, "none", "all"),
    "draw": Kind("dense", INIT, "none", "search"),
}
BASELINES = tuple(name for name, kind in KINDS.items() if kind.baseline)
COLUMNS = tuple(dict.fromkeys(kind.column for kind in KINDS.values() if kind.column not in (None, "full")))


@dataclass(frozen=True)
class Way:
    """How a search draws its candidate masks (--search). Whatever draws them, each level's ticket is trained from
    the rewind point and judged alike."""

    drawer: str | None  # the kind whose unit draws every level's mask as it trains (at level 0, or the draw unit);
    #                     None: each trunk level's trained weights give the next level's mask (IMP)
    what: str  # for people: how the masks are drawn


WAYS: dict[str, Way] = {
    "imp": Way(None, "iterative magnitude pruning: each level's mask from the previous level's trained weights"),
    "early-bird": Way("trunk", "early-bird: every level's mask drawn while the dense model trains (level 0), once "
                               "it stops changing"),
    "gradual": Way("draw", "gradual magnitude pruning in one fine-tuning (cubic schedule); each level's mask where "
                           "the schedule passes its sparsity"),
}
