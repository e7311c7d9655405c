"""The atomic steps of a job's life on Redis, as Lua scripts (one round trip each, and no
other client sees a step half done).

A job is a hash (keys.job) and an entry of the endpoint's stream. The hash says where it
is: status, created/started/finished (the server's clock, ms), the run's owner (a fence:
consumer#delivery), deliveries, progress, cancel, and `final` — the final record, written
once: the first writer wins, and the entry is acknowledged and deleted in the same step.
"""
from __future__ import annotations

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Ends a job: its final record, the entry acknowledged and deleted, the webhook into the
# outbox, /runsync woken, the counts; the record and its chunks expire after the TTL.
# keys: job, stream, hooks, ended (a channel), counts, chunks
_FINALIZE = _NOW + """
local function finalize(k, group, entry, status, final, ttl, job_id, webhook)
  redis.call('HSET', k[1], 'status', status, 'final', final, 'finished', now_ms())
  redis.call('HDEL', k[1], 'progress', 'cancel')
  if entry and entry ~= '' then
    redis.call('XACK', k[2], group, entry)
    redis.call('XDEL', k[2], entry)
  end
  if webhook and webhook ~= '' then
    redis.call('XADD', k[3], '*', 'id', job_id, 'url', webhook)
  end
  redis.call('EXPIRE', k[1], ttl)
  redis.call('EXPIRE', k[6], ttl)
  local idem = redis.call('HGET', k[1], 'idem')
  if idem then redis.call('EXPIRE', idem, ttl) end
  redis.call('HINCRBY', k[5], status, 1)
  -- last, and never an error: an ACL user without the channel's right (Redis 7's default
  -- for channels) keeps a whole step; its waiters read their records every 5 s instead
  redis.pcall('PUBLISH', k[4], job_id)
end
"""

# keys: job, stream, idem. argv: id, job json, webhook, use idem (1/0), idem ttl s
# An idempotency key names a job while that job's record exists (finalize gives the key
# the record's expiry); a key whose record is gone is taken for a new job.
SUBMIT = _NOW + """
if ARGV[4] == '1' then
  local prev = redis.call('GET', KEYS[3])
  local base = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1])
  if prev and redis.call('EXISTS', base .. prev) == 1 then return {0, prev} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ARGV[1]} end
local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'job', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'IN_QUEUE', 'created', now_ms(), 'entry', entry,
           'webhook', ARGV[3])
if ARGV[4] == '1' then
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5])
  redis.call('HSET', KEYS[1], 'idem', KEYS[3])
end
return {1, ARGV[1]}
"""

# A worker read an entry (new or reclaimed): it becomes this delivery's owner.
# keys: job, stream. argv: group, entry, consumer, max deliveries
# -> {'gone'} | {'final'} | {'run'|'cancel'|'dead', fence, deliveries, age ms, last owner}
START = _NOW + """
local rec = redis.call('HMGET', KEYS[1], 'status', 'final', 'created', 'cancel', 'owner')
if not rec[1] or rec[2] then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  if not rec[1] then return {'gone'} end
  return {'final'}
end
local n = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
local fence = ARGV[3] .. '#' .. n
local now = now_ms()
redis.call('HSET', KEYS[1], 'owner', fence, 'status', 'IN_PROGRESS', 'started', now)
local age = now - tonumber(rec[3] or now)
local kind = 'run'
if n > tonumber(ARGV[4]) then kind = 'dead' elseif rec[4] == '1' then kind = 'cancel' end
return {kind, fence, n, age, rec[5] or ''}
"""

# keys: job, stream, hooks, ended, counts, chunks, dead. argv: group, entry, fence ('' for
# none), status, final json, ttl s, job id, dead job json ('' unless a dead letter),
# dead error, dead maxlen -> 'ok' | 'gone' | 'final' | 'fenced'
FINISH = _FINALIZE + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  return 'gone'
end
local rec = redis.call('HMGET', KEYS[1], 'final', 'owner', 'webhook')
if rec[1] then return 'final' end
if ARGV[3] ~= '' and rec[2] ~= ARGV[3] then return 'fenced' end
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[10], '*', 'id', ARGV[7], 'job', ARGV[8],
             'error', ARGV[9])
end
finalize(KEYS, ARGV[1], ARGV[2], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], rec[3])
return 'ok'
"""

# Keeps a running job's entry from looking idle (XCLAIM JUSTID: the delivery count does
# not move), if this run still owns it. keys: job, stream. argv: group, consumer, entry,
# fence -> 1 held | 0 taken over | 2 already final | 3 held, and a cancel was asked
RENEW = """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'cancel', 'final')
if rec[3] then return 2 end
if rec[1] ~= ARGV[4] then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
if rec[2] == '1' then return 3 end
return 1
"""

# A stopping worker gives a job back: queued again, its delivery not counted, and its
# entry idle past the lease, so the next worker's reclaim takes it at once.
# keys: job, stream. argv: group, entry, fence, idle ms, released consumer -> 1 | 0
RELEASE = """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'final')
if rec[2] or rec[1] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'IN_QUEUE')
redis.call('HDEL', KEYS[1], 'owner', 'started', 'progress')
redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[5], 0, ARGV[2], 'IDLE', ARGV[4], 'JUSTID')
return 1
"""

# keys: job, stream, hooks, ended, counts, chunks. argv: group, final json, ttl s,
# queued only (1/0), job id -> 'CANCELLED' (cancelled now), 'was:<final status>', the
# running job's status (its worker is told), or '' (no such job)
CANCEL = _FINALIZE + """
local rec = redis.call('HMGET', KEYS[1], 'status', 'final', 'entry', 'webhook')
if not rec[1] then return '' end
if rec[2] then return 'was:' .. rec[1] end
if rec[1] == 'IN_QUEUE' then
  -- an entry no worker has read stays (a workers' read skips it): deleting it would leave
  -- a tombstone past the group's last id, and the group's lag (KEDA's metric) unknown
  local entry = ''
  if #redis.call('XPENDING', KEYS[2], ARGV[1], rec[3], rec[3], 1) > 0 then entry = rec[3] end
  finalize(KEYS, ARGV[1], entry, 'CANCELLED', ARGV[2], tonumber(ARGV[3]), ARGV[5], rec[4])
  return 'CANCELLED'
end
if ARGV[4] ~= '1' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return rec[1]
"""

# keys: job. argv: fence, progress json -> 1 | 0 (not this run's any more)
PROGRESS = """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'final')
if rec[2] or rec[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
return 1
"""

# A job's chunks, held until /stream reads them, within a count and a byte bound (the
# oldest go first; the record counts them in 'dropped'; 'unread' is the bytes held).
# A batch is written once: its number, above the last this run wrote ('chunk_seq' of
# 'chunk_run', its fence: a redelivered run numbers from 1 again), makes a retry after a
# timeout the server did run a no-op.
# keys: job, chunks. argv: fence, max chunks, max bytes, chunks dropped by the worker,
# batch number, chunk json... -> 0 (not this run's) | 1 held | 2 held, and the first drop
CHUNK = """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'final', 'unread', 'dropped', 'chunk_seq',
                      'chunk_run')
if rec[2] or rec[1] ~= ARGV[1] then return 0 end
if rec[6] == ARGV[1] and tonumber(ARGV[5]) <= tonumber(rec[5] or '0') then return 1 end
redis.call('HSET', KEYS[1], 'chunk_seq', ARGV[5], 'chunk_run', ARGV[1])
local cap, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local before = tonumber(rec[4] or '0')
local dropped = before + tonumber(ARGV[4])
local n = redis.call('LLEN', KEYS[2])
local held = n > 0 and tonumber(rec[3] or '0') or 0
for i = 6, #ARGV do
  local size = string.len(ARGV[i])
  if size > limit then
    dropped = dropped + 1
  else
    while n > 0 and (n >= cap or held + size > limit) do
      held = held - string.len(redis.call('LPOP', KEYS[2]))
      n = n - 1
      dropped = dropped + 1
    end
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
    held = held + size
  end
end
redis.call('HSET', KEYS[1], 'unread', held)
if dropped > 0 then redis.call('HSET', KEYS[1], 'dropped', dropped) end
if before == 0 and dropped > 0 then return 2 end
return 1
"""

# /stream: the chunks since the last call, drained. keys: chunks, job -> {status, chunks,
# chunks dropped}
DRAIN_CHUNKS = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
local rec = redis.call('HMGET', KEYS[2], 'status', 'dropped')
if rec[1] then redis.call('HSET', KEYS[2], 'unread', 0) end
return {rec[1] or '', items, rec[2] or '0'}
"""

ALL = {"submit": SUBMIT, "start": START, "finish": FINISH, "renew": RENEW,
       "release": RELEASE, "cancel": CANCEL, "progress": PROGRESS, "chunk": CHUNK,
       "drain_chunks": DRAIN_CHUNKS}


class Scripts:
    """The scripts registered on one client (sync or asyncio): EVALSHA, loading the script
    again when the server has lost its cache (a restart)."""

    def __init__(self, client):
        for name, text in ALL.items():
            setattr(self, name, client.register_script(text))
