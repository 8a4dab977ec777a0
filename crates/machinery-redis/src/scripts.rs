//! The Lua scripts (in `lua/`, one file each, except Go's one-line unlock script). Each runs
//! atomically on the server; `redis::Script` sends `EVALSHA` and loads the script again after
//! a server restart (`NOSCRIPT`).

use std::sync::LazyLock;

use redis::Script;

/// Heartbeat of one consumer (when `ARGV[1]` is not empty) and recovery of dead consumers:
/// every registered consumer whose lease ended has its processing list moved back to the
/// HEAD of the queue, in its original order, and is removed from the registry. Leases use
/// the server's clock so that clock skew between workers does not matter. Returns how many
/// messages were moved back.
///
/// KEYS: registry, queue. ARGV: consumer id, lease in ms, processing key prefix.
pub(crate) static TICK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/tick.lua")));

/// A consumer that stopped gracefully gives back what it still holds: its processing list
/// goes back to the head of the queue, and it leaves the registry.
///
/// KEYS: processing list, queue, registry. ARGV: consumer id.
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/release.lua")));

/// Make a consumer's processing list hold exactly what the consumer holds, after a lost reply:
/// remove one occurrence of each failed ack, keep one entry per held message (`ARGV[2..h+1]`,
/// counted as a multiset), and move every other entry back to the HEAD of the queue, in list
/// order. Returns how many were moved back and how many failed acks were removed.
///
/// KEYS: processing list, queue. ARGV: h (how many held messages follow), the held messages,
/// then the failed acks.
pub(crate) static RECONCILE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/reconcile.lua")));

/// Move up to `ARGV[2]` due delayed tasks (score <= `ARGV[1]`, Unix ns) to the tail of the
/// queue named by their `RoutingKey` (`ARGV[3]` when empty or unreadable), as Go's `RPUSH`
/// does. Members stay Go's signature JSON byte for byte. Returns how many were moved.
///
/// The routing key is read with a pattern when the member has Go's field order (the first
/// `"RoutingKey":` is then the top-level one, since earlier fields are strings) and with
/// cjson otherwise. Queue keys are computed inside the script: not for Redis Cluster.
///
/// KEYS: delayed set. ARGV: now ns, batch size, default queue.
pub(crate) static MOVE_DUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/move_due.lua")));

/// Flip `ChordTriggered` to true in a stored GroupMeta, once. Returns 1 to the caller that
/// flipped it, 0 when it was already set, -1 when the group is unknown. The flip edits the
/// bytes in place (a JSON key cannot occur inside a string value, whose quotes are escaped),
/// so the stored meta stays Go's encoding and keeps its expiry.
///
/// KEYS: group UUID.
pub(crate) static TRIGGER_CHORD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/trigger_chord.lua")));

/// Release a redsync mutex: delete it only when it still holds our token (Go's script, byte
/// for byte).
///
/// KEYS: mutex. ARGV: token.
pub(crate) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#,
    )
});

/// The group meta followed by the stored state of every member, in `TaskUUIDs` order (nil
/// for members with nothing stored), in one round trip. Nil when the group is unknown.
/// Member keys come from the meta: not for Redis Cluster.
///
/// KEYS: group UUID.
pub(crate) static GROUP_STATES: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/group_states.lua")));

/// Go's periodic-task lock: `SET key <deadline ns> NX PX <ms>`; when the key exists and the
/// deadline stored in it has passed, take it over. Atomic, so it needs no GETSET race.
/// Returns 1 when the caller holds the lock.
///
/// KEYS: lock key. ARGV: deadline ns, ttl ms, now ns.
pub(crate) static LOCK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/lock.lua")));

/// Record that a group member is done and count the distinct members done, in amortised
/// O(1): a set of done members, and the list of members not yet seen done, in group order
/// (copied once from the meta). The head of that list is popped while it is in the set or its
/// stored state is SUCCESS / FAILURE (written by a Go worker, which does not use the set);
/// each member is popped once, so all calls together walk the group once. When the list is
/// empty every member is done and the count is exact. Returns -1 when the group is unknown.
/// Member keys are computed: not for Redis Cluster.
///
/// KEYS: group meta, done set, waiting list. ARGV: member UUID, ttl seconds.
pub(crate) static MARK_DONE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/mark_done.lua")));

/// Redis Cluster form of the delayed sweep, first step: claim up to `ARGV[2]` due delayed
/// tasks (score <= `ARGV[1]`, Unix ns) by moving them to the claims set, scored with the
/// server time (ms) at which the claim ends (`ARGV[3]` ms from now), and return them together
/// with the claims that ended unfinished (a sweeper died between claim and push). The caller
/// pushes each to its queue (another slot), then removes it from the claims set. Both keys
/// share the delayed set's hash tag.
///
/// KEYS: delayed set, claims set. ARGV: now ns, batch size, claim ms.
pub(crate) static CLAIM_DUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/claim_due.lua")));

/// Redis Cluster form of a nack: remove the message from the processing list and append an
/// entry (the message, or its dead letter) to a list in the same slot, atomically.
///
/// KEYS: processing list, target list. ARGV: message, entry.
pub(crate) static NACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/nack.lua")));
