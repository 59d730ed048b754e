//! The fleet's Lua scripts: each reads and writes its keys in one atomic step, so two replicas
//! that get the same `connect` (or two calls of one caller) cannot both win.
//!
//! A claim lives as long as its owner does: a claim whose owner has no report (its heartbeat
//! stopped: the replica died) is stale, and anyone may take it. So a replica renews one key per
//! heartbeat, not one per call. The caller's key holds `owner|call id` (or `owner|placing:…`
//! while an outbound call is placed), so both its owner and its call can be checked. The
//! owners' report keys are built in the script from the prefix in ARGV; they share the fleet's
//! hash tag, so they are in the same slot as the declared keys.

use redis::Script;

pub(super) struct Scripts {
    /// KEYS call, caller, tomb; ARGV owner, claim ms, call id, has caller (1/0), report prefix.
    /// Answers `claimed`, `live`, `ended` or `busy`.
    pub(super) claim: Script,
    /// KEYS caller; ARGV holder (`owner|placing:…`), claim ms, report prefix. Answers `claimed`
    /// or `busy`.
    pub(super) claim_caller: Script,
    /// KEYS call, caller, early; ARGV owner, call id, holder, claim ms. Claims the call, moves the
    /// caller's key from the placeholder to the call, and answers the events kept for it.
    pub(super) bind: Script,
    /// KEYS call, caller, tomb; ARGV owner, call id, tombstone ms, has caller. Deletes what this
    /// owner still holds and tombstones the id.
    pub(super) release: Script,
    /// KEYS caller; ARGV holder. Deletes an unbound placeholder.
    pub(super) release_placement: Script,
    /// KEYS call; ARGV report prefix. Answers the call's owner if it is alive, else nothing.
    pub(super) owner: Script,
    /// KEYS call and caller, in pairs; ARGV owner, claim ms, report prefix, then call id and has
    /// caller per pair. Writes this owner's claims again (after Redis lost them), except where a
    /// live replica holds a key now, and answers those call ids.
    pub(super) reassert: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            claim: Script::new(
                r"
local function alive(holder)
  local owner = string.match(holder, '^[^|]+')
  return redis.call('EXISTS', ARGV[5] .. owner) == 1
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'ended' end
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[5] .. owner) == 1 then return 'live' end
local mine = ARGV[1] .. '|' .. ARGV[3]
if ARGV[4] == '1' then
  local holder = redis.call('GET', KEYS[2])
  if holder and holder ~= mine and alive(holder) then return 'busy' end
  redis.call('SET', KEYS[2], mine, 'PX', ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'claimed'
",
            ),
            claim_caller: Script::new(
                r"
local holder = redis.call('GET', KEYS[1])
if holder then
  local owner = string.match(holder, '^[^|]+')
  if redis.call('EXISTS', ARGV[3] .. owner) == 1 then return 'busy' end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'claimed'
",
            ),
            bind: Script::new(
                r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
local holder = redis.call('GET', KEYS[2])
if (not holder) or holder == ARGV[3] then
  redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[4])
end
local kept = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
return kept
",
            ),
            release: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[4] == '1' and redis.call('GET', KEYS[2]) == ARGV[1] .. '|' .. ARGV[2] then
  redis.call('DEL', KEYS[2])
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
return 1
",
            ),
            release_placement: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
            ),
            owner: Script::new(
                r"
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[1] .. owner) == 1 then return owner end
return false
",
            ),
            reassert: Script::new(
                r"
local function alive(holder)
  local owner = string.match(holder, '^[^|]+')
  return owner ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. owner) == 1
end
local taken = {}
for i = 1, #KEYS, 2 do
  local n = (i + 1) / 2
  local id = ARGV[2 + 2 * n]
  local has_caller = ARGV[3 + 2 * n]
  local owner = redis.call('GET', KEYS[i])
  if owner and alive(owner) then
    table.insert(taken, id)
  else
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    if has_caller == '1' then
      local holder = redis.call('GET', KEYS[i + 1])
      if not (holder and alive(holder)) then
        redis.call('SET', KEYS[i + 1], ARGV[1] .. '|' .. id, 'PX', ARGV[2])
      end
    end
  end
end
return taken
",
            ),
        }
    }
}
