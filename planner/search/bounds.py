"""A lower bound on the iteration time of *every* legal plan, whatever the candidate lists.

The search's CP-SAT bound covers the plans its candidate lists can express. When those
lists are complete (problem.complete: every legal option that fits alone, less only
provably dominated ones) that is the whole legal space; otherwise this module gives a
bound that needs no lists, from each call's exhaustive minima (candidates.enumerate_call
prices every mesh shape, every (dp, tp, pp), every power-of-two micro-batch count):

* work: every call runs for at least its least (time x devices) on the cluster, and a
  periodic schedule fits one iteration's work on the devices in one period:
  P >= sum_c min_device_s(c) / num_devices;
* cycles: along a cross-iteration parameter edge u(k) -> v(k+lag) (lag 1, or 1 + K for
  a generate call under max_staleness K) and any same-iteration path v -> ... -> u, the
  calls on it run one after another, and the cycle spans `lag` periods:
  P >= (sum of min_time_s on the longest such path) / lag.

Reallocs and data transfers only add time, so leaving them out keeps it a bound.
"""

from __future__ import annotations

from planner.search.problem import Problem


def work_bound_s(p: Problem) -> float:
    return sum(p.min_device_s) / p.num_devices


def cycle_bound_s(p: Problem) -> float:
    best = 0.0
    for v in range(p.n):
        for u, lag in zip(p.prev_preds[v], p.prev_lags[v]):
            # Longest path v -> u over same-iteration edges (indices are topological).
            longest = [float("-inf")] * p.n
            longest[v] = p.min_time_s[v]
            for w in range(v + 1, u + 1):
                for x in p.preds[w]:
                    if longest[x] > float("-inf"):
                        longest[w] = max(longest[w], longest[x] + p.min_time_s[w])
            best = max(best, (longest[u] if u != v else p.min_time_s[u]) / lag)
    return best


def full_space_bound_s(p: Problem) -> float:
    """max(work, cycles): no legal plan of the spec is faster, under the simulator's rules."""
    return max(work_bound_s(p), cycle_bound_s(p))
