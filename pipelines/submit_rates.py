"""Jobs submitted a minute, per account and per provider, counted in Redis for every replica.

A generic cell rate algorithm per limit: a key holds the time at which its next job is due at the
limit's steady rate (its "theoretical arrival time"); a job is admitted while that time is less than
a minute ahead, so a full minute's jobs may come at once, and then one each 60/limit seconds. The
script runs atomically on the Redis clock and judges a request's jobs in order against the account's
key and each of a job's providers' keys: it admits the first that fit and charges them to the keys, and
answers when the next would fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

# KEYS: the limits' keys: first those every job counts against (the account's), then the providers'.
# ARGV: the number of keys every job counts against; each key's limit a minute; then, one a job, the
# number of the job's providers with a limit, and the 1-based index of each among the providers' keys.
# Reply: {jobs admitted, ms until the next would be}. Times in microseconds; the window is a minute.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local shared = tonumber(ARGV[1])
local interval, due, stored = {}, {}, {}
for i = 1, #KEYS do
  interval[i] = math.floor(60000000 / tonumber(ARGV[1 + i]))
  stored[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  due[i] = math.max(stored[i], now)
end
local admitted, wait = 0, 0
local j = 2 + #KEYS
while j <= #ARGV do
  local keys = {}
  for i = 1, shared do keys[#keys + 1] = i end
  local providers = tonumber(ARGV[j])
  for k = 1, providers do keys[#keys + 1] = shared + tonumber(ARGV[j + k]) end
  j = j + 1 + providers
  for _, i in ipairs(keys) do
    local late = due[i] + interval[i] - 60000000 - now
    if late > wait then wait = late end
  end
  if wait > 0 then break end
  for _, i in ipairs(keys) do due[i] = due[i] + interval[i] end
  admitted = admitted + 1
end
for i = 1, #KEYS do
  if due[i] > stored[i] and due[i] > now then
    redis.call('SET', KEYS[i], string.format('%d', due[i]), 'PX', math.ceil((due[i] - now) / 1000) + 1)
  end
end
return {admitted, math.ceil(wait / 1000)}
"""


@dataclass(frozen=True)
class Admitted:
    """How many of the jobs (the first ones) may go on, and, if not all, when the next may (seconds)."""

    jobs: int
    retry_after: float = 0.0


class SubmitRates:
    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace
        self._admit = redis.register_script(_ADMIT)

    async def admit(
        self,
        accounts: Sequence[tuple[str, int | None]],
        jobs: Sequence[tuple[str, ...]],
        provider_limits: dict[str, int],
    ) -> Admitted:
        """Admit jobs (each given as the providers its steps call: a chain's may be several), in order,
        against the limits a minute of `accounts` ((key, limit): each job counts against every one, a
        user's and a team's) and of each of its providers; none of them a limit: all go on, with no
        trip to Redis."""
        limited = sorted({p for providers in jobs for p in providers if p in provider_limits})
        shared = [(account, limit) for account, limit in accounts if limit is not None]
        if not shared and not limited:
            return Admitted(len(jobs))
        keys = [f"{self.namespace}:submit-rate:{account}" for account, _ in shared]
        keys += [f"{self.namespace}:submit-rate:provider:{p}" for p in limited]
        limits = [limit for _, limit in shared] + [provider_limits[p] for p in limited]
        index = {p: i + 1 for i, p in enumerate(limited)}
        args = [len(shared), *limits]
        for providers in jobs:
            assert not isinstance(providers, str), "a job's providers are a tuple"
            counted = sorted({index[p] for p in providers if p in index})
            args += [len(counted), *counted]
        admitted, wait_ms = await self._admit(keys=keys, args=args)
        return Admitted(int(admitted), 0.0 if admitted == len(jobs) else wait_ms / 1000)
