//! The fleet's Lua scripts: each reads and writes its keys in one atomic step, so two replicas
//! that get the same `connect` (or two calls of one caller) cannot both win.

use redis::Script;

pub(super) struct Scripts {
    /// KEYS call, caller, tomb; ARGV owner, lease ms, call id, has caller (1/0).
    /// Answers `claimed`, `live`, `ended` or `busy`.
    pub(super) claim: Script,
    /// KEYS caller; ARGV holder, lease ms. Answers `claimed` or `busy`.
    pub(super) claim_caller: Script,
    /// KEYS call, caller, early; ARGV owner, call id, holder, lease ms. Claims the call, moves
    /// the caller's key from the placeholder to the call, and answers the events kept for it.
    pub(super) bind: Script,
    /// KEYS call, caller, tomb; ARGV owner, call id, tombstone ms, has caller. Deletes what this
    /// owner still holds and tombstones the id.
    pub(super) release: Script,
    /// KEYS caller; ARGV holder. Deletes an unbound placeholder.
    pub(super) release_placement: Script,
    /// KEYS call and caller, in pairs; ARGV owner, lease ms, then call id and has caller per
    /// pair. Renews this owner's claims, writes them again where they are gone (Redis lost
    /// them), and answers the call ids now owned by another replica.
    pub(super) renew: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            claim: Script::new(
                r"
if redis.call('EXISTS', KEYS[3]) == 1 then return 'ended' end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'live' end
if ARGV[4] == '1' then
  local holder = redis.call('GET', KEYS[2])
  if holder and holder ~= ARGV[3] then return 'busy' end
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'claimed'
",
            ),
            claim_caller: Script::new(
                r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'claimed' end
return 'busy'
",
            ),
            bind: Script::new(
                r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
local holder = redis.call('GET', KEYS[2])
if (not holder) or holder == ARGV[3] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
end
local kept = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
return kept
",
            ),
            release: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[4] == '1' and redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
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
            renew: Script::new(
                r"
local lost = {}
for i = 1, #KEYS, 2 do
  local n = (i + 1) / 2
  local id = ARGV[1 + 2 * n]
  local has_caller = ARGV[2 + 2 * n]
  local owner = redis.call('GET', KEYS[i])
  if (not owner) or owner == ARGV[1] then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    if has_caller == '1' then
      local holder = redis.call('GET', KEYS[i + 1])
      if (not holder) or holder == id then
        redis.call('SET', KEYS[i + 1], id, 'PX', ARGV[2])
      end
    end
  else
    table.insert(lost, id)
  end
end
return lost
",
            ),
        }
    }
}
