-- market.cluster: one conversation space over NATS (DESIGN §7; the user's
-- view and the wire protocol are docs/cluster.md).
--
-- cluster.driver{...} is a spawn action.  The driver is the event relay one
-- level sideways:
--   - it observes every local endpoint whose topic is cluster.topic(_) (any
--     orientation, any interest) and announces its role to the other nodes;
--   - for every role another node announces it holds a stand-in endpoint
--     with that role, so local processes get presence, refined to the
--     intersection, and absence exactly as if the remote endpoint were in
--     this VM: the VM's own visibility rules decide who sees a stand-in;
--   - a message (or feedback) sent here to cluster.topic(X) goes once to
--     every other node with a matching subscriber (publisher) and is sent
--     again there; never back to the node it came from.
-- Its own endpoints (the two observers and the stand-ins) are seen by its
-- observers too; it tells them apart by counting (own), as roles that are
-- equal cannot be told apart and need not be.
-- The data path is C (drivers/lcluster.c, "The forwarder"): the two
-- observers belong to a native process the driver spawns (conn:start),
-- which forwards sends and feedback and hands the local roles' presences
-- and absences to this driver's functions at once; sends and feedback
-- from a known node are delivered by conn:next.  The driver tells it of
-- every node and remote role.
local market, sys = ...
local M = {}

local _ = market._
local repr, P = market.repr, market.perform
-- A value an error names: a term as repr writes it, anything else by its
-- type (repr raises on a non-term, in place of the error meant).
local function show(v) return market.is_term(v) and repr(v) or type(v) end
local readable, alarm = market.ground.readable, market.ground.monotonic_alarm
local to_cbor, from_cbor = market.to_cbor, market.from_cbor
-- v's encoding, or nil and why: a legal term may nest or grow past the
-- term limits in force once a message wraps it (to_cbor raises then).
local function encode(v)
  local ok, bytes = pcall(to_cbor, v)
  if ok then return bytes end
  return nil, bytes
end

local topic = market.record("market-cluster", "topic")
-- What a driver publishes in its VM: it drives `cluster` there (below,
-- boot's last endpoints).
local driving = market.record("market-cluster:driver", "cluster", "pid")
M.topic = topic

-- Role ids in the order of their adds (a node's own, or the stand-ins of
-- one peer's): ids[1 .. last], false where one went since (`holes` of
-- them), closed up once the holes are half; each role's record keeps its
-- place (`at`).  Announcing a node's roles, forgetting a node and
-- trimming it to a snapshot walk it: collected with pairs and sorted, a
-- node of 95,000 roles held the driver's VM 20 to 45 ms longer each time
-- (docs/performance.md, round 39).
local function new_order() return { ids = {}, last = 0, holes = 0 } end

local function order_add(order, id, r)
  order.last = order.last + 1
  order.ids[order.last], r.at = id, order.last
end

-- r, roles[id] until now, went (roles: id -> record of the roles left).
local function order_del(order, r, roles)
  local ids = order.ids
  ids[r.at], order.holes = false, order.holes + 1
  if order.holes * 2 <= order.last then return end
  local j = 0
  for k = 1, order.last do
    local id = ids[k]
    if id then
      j = j + 1
      ids[j], roles[id].at = id, j
    end
  end
  for k = j + 1, order.last do ids[k] = nil end
  order.last, order.holes = j, 0
end

M.VERSION = 2               -- of the wire protocol (docs/cluster.md)
-- The counters (sent, received, delivered, dropped, malformed), read and
-- set like a table's fields; the forwarder counts in C.  max_steps: the
-- most steps one activation of a driver took ("work in steps").
M.stats = sys.cluster_stats()
-- The time a node was last heard from, and when a snapshot was asked for:
-- ms of a clock that only goes forward, as the NATS queue's `at` is
-- (drivers/lcluster.c), not market.now(), which a step of the wall clock
-- moves: a step forward made every node look lost at once.
local clock = sys.cluster_clock

local function warn(fmt, ...)
  market.log.warn("market.cluster: " .. fmt, ...)
end

-- The endpoint constructor of each orientation and interest.
local CTOR = {
  publisher = { participant = market.publisher, observer = market.observe_subscribers,
                everything = market.observe_subscribers_everything },
  subscriber = { participant = market.subscriber, observer = market.observe_publishers,
                 everything = market.observe_publishers_everything },
}

-- A NATS subject token: what a cluster or node name may be.  At most
-- NAME_MAX bytes: the longest subject made of them, market.C.node.N, is
-- then 523 bytes, well within the line nats-server takes (its
-- max_control_line, 4096 by default), which a longer one passed: the
-- server closed the connection of the node that published to it.
local NAME_MAX = 255
local function check_name(what, v)
  if type(v) ~= "string" or not v:match("^[%w_%-]+$") then
    error(("market.cluster.driver: %s must be a non-empty string of letters, digits, '-' and '_', got %s")
          :format(what, show(v)), 3)
  end
  if #v > NAME_MAX then
    error(("market.cluster.driver: %s must be at most %d bytes (a NATS subject holds it), got %d")
          :format(what, NAME_MAX, #v), 3)
  end
  return v
end

local function check_ms(what, v, default)
  if v == nil then return default end
  if math.type(v) == nil or not (v > 0) or v == math.huge then
    error(("market.cluster.driver: %s must be a number of milliseconds above 0, got %s")
          :format(what, show(v)), 3)
  end
  return v
end

-- The servers, as a reason names them: without a password or token (a
-- reason is logged, and reaches other processes).
local function servers(urls)
  local shown = {}
  for i, u in ipairs(urls) do shown[i] = (u:gsub("^(%a+)://[^/@]*@", "%1://***@")) end
  return table.concat(shown, ", ")
end

-- Steps one activation of the driver takes at most (boot: "work in
-- steps"), as many as the forwarder's path delivers topics in one turn;
-- and the most roles in a part of a hello or snapshot.
local STEPS = 256
local PART_ROLES = 1024

local function role_key(o, i, t) return o .. " " .. i .. " " .. repr(t) end

-- ---- messages across nodes, as bytes -------------------------------------
-- A message [2, kind, node, inc, X1, X2, ...] is most of the traffic, so
-- the forwarder makes and reads it around the Xs' own encodings, from the
-- envelopes made here: the wire is the same as to_cbor of the whole
-- sequence (docs/cluster.md), because an encoded sequence is the version
-- wrapper (to_cbor(nil) is it and f6), its array header, then its items'
-- encodings.

-- The items version, kind, node and incarnation, encoded one after the
-- other: what follows the array header (0x84) of the four-item sequence.
local function envelope(kind, node, inc)
  local e = to_cbor({ M.VERSION, kind, node, inc })
  assert(e:byte(8) == 0x84)
  return e:sub(9)
end

-- The bytes every send's (feedback's) envelope starts with, up to the node
-- name (the forwarder recognises them).
local LEAD = {}
for _i, kind in ipairs({ "send", "feedback" }) do
  local e = envelope(kind, "", 0)
  LEAD[kind] = e:sub(1, #e - 2)                       -- (without "" and 0: 40 00)
end

-- ---- checking what arrives ----------------------------------------------
-- Bytes from NATS are untrusted: a message is checked whole before any of
-- it is used.  wrong(m) -> nil when m is a message of this protocol, else
-- why not.
local INTERESTS = { participant = true, observer = true, everything = true }
local function is_seq(v) return type(v) == "table" end          -- (from_cbor: a sequence)
local function is_int(v) return math.type(v) == "integer" end
local function is_role(o, i) return CTOR[o] ~= nil and INTERESTS[i] == true end

-- Every item up to #list (a hole included: from_cbor keeps nulls as
-- holes), as a part's roles are gathered by their length.
local function wrong_roles(list)
  if not is_seq(list) then return "a snapshot's roles are not a sequence" end
  for k = 1, #list do
    local r = list[k]
    if not is_seq(r) or not is_int(r[1]) or not is_role(r[2], r[3]) then
      return "a snapshot holds something that is not [id, orientation, interest, topic]"
    end
  end
end

-- The fields after [version, kind, node, incarnation], by kind.
local CHECKS = {
  hello = function(m) return not is_int(m[5]) and "no sequence number" or wrong_roles(m[6]) end,
  add = function(m)
    if not is_int(m[5]) or not is_int(m[6]) then return "no sequence number or id" end
    if not is_role(m[7], m[8]) then return "not an orientation and interest" end
  end,
  del = function(m)
    if not is_int(m[5]) or not is_int(m[6]) then return "no sequence number or id" end
  end,
  heartbeat = function(m) if not is_int(m[5]) then return "no sequence number" end end,
  want = function() end,
  bye = function() end,
  send = function(m) if #m < 5 then return "no topic" end end,
}
CHECKS.feedback = CHECKS.send
CHECKS.snapshot = CHECKS.hello
-- A hello or snapshot too large for one NATS message, in parts k of n.
CHECKS["hello-part"] = function(m)
  if not is_int(m[5]) then return "no sequence number" end
  if not (is_int(m[6]) and is_int(m[7]) and m[6] >= 1 and m[6] <= m[7]) then
    return "not a part k of n"
  end
  return wrong_roles(m[8])
end
CHECKS["snapshot-part"] = CHECKS["hello-part"]
-- The kinds that carry a node's roles (all of them, or a part).
local ROLES = { hello = true, snapshot = true, ["hello-part"] = true, ["snapshot-part"] = true }
-- The kinds held while a node's parts come (handle, part_of).
local HELD = { add = true, del = true, heartbeat = true }

local function wrong(m)
  if not is_seq(m) then return "not a sequence: " .. repr(m, 200) end
  if m[1] ~= M.VERSION then
    return ("version %s (this node speaks %d: every node of a cluster must)"):format(repr(m[1], 50), M.VERSION)
  end
  local check = CHECKS[m[2]]
  if not check then return "an unknown kind " .. repr(m[2], 50) end
  if type(m[3]) ~= "string" or not m[3]:match("^[%w_%-]+$") then
    return "a node name that is not a NATS token: " .. repr(m[3], 100)
  end
  -- (a subject holding a longer one would be past the server's line:
  -- asking it for a snapshot got this node's connection closed)
  if #m[3] > NAME_MAX then
    return ("a node name longer than %d bytes: %s"):format(NAME_MAX, repr(m[3], 100))
  end
  if not is_int(m[4]) then return "an incarnation that is not an integer" end
  -- (A null inside an array, which Lua would read as a hole, so that the
  -- topic or reason holding it were no term, from_cbor refuses.)
  local why = check(m)
  return why and m[2] .. ": " .. why
end

local function boot(cfg)
  return function()
    local me, inc = cfg.node, cfg.incarnation
    local prefix = "market." .. cfg.cluster
    local ALL, MINE = prefix .. ".all", prefix .. ".node." .. me
    -- The first connection is made off the loop (lcluster.c,
    -- "Connecting"): "connected" or "failed" comes through on_readable.
    local conn, err = sys.nats_connect(cfg.urls, me, nil, cfg.tls)
    if not conn then
      -- No process of ours has an endpoint yet: the failure is this
      -- process's, with the reason (the supervisor or the log tells).
      error(("cannot connect to NATS at %s: %s"):format(servers(cfg.urls), err), 0)
    end
    local connected, joined = false, false
    local seq = 0
    -- Local roles: id -> {o, i, inner topic, size, at}; key -> ids of
    -- that role; `order`, their ids in the order of their adds, which is
    -- theirs (nextid only grows): a hello or a snapshot takes them so.
    local roles, bykey, nextid, order = {}, {}, 0, new_order()
    -- Presences (pres) and absences (abs) of our own endpoints the
    -- observers are yet to hear, by role key.
    local own_pres, own_abs = {}, {}
    -- Remote nodes: name -> {inc, seq, heard, roles = {id -> role},
    -- nroles, order, syncing}; a role is {o, i, topic (inner), name (of
    -- its stand-in), at}; order, the ids in the order their stand-ins
    -- were made (new_order).
    -- heard: when the node's last message reached our queue (conn:next's
    -- at), not when we read it; the forwarder keeps it for the sends and
    -- feedback it delivers (conn:heard).  The forwarder knows each node
    -- and role too.
    local nodes = {}
    -- Incarnations a newer one of the same name replaced: name -> list
    -- (the last RETIRED).  What they still say is stale (in flight past
    -- a restart) or another node under that name: ignored either way,
    -- so two nodes with one name do not make every peer flap between
    -- them.
    local retired, RETIRED = {}, 8
    -- Incarnations cut off for holding more than cfg.max_roles roles:
    -- name -> incarnation.  What they say is ignored until they restart.
    local refused = {}
    -- The names retired or refused hold, oldest first (a queue from
    -- past_head to past_tail): at most cfg.max_nodes, the oldest
    -- forgotten, so that names made up by the million do not grow them
    -- without end.  (Not #past: with its front set to nil, the length
    -- operator may answer any border, and the queue grew for ever.)
    local past, past_head, past_tail, nnodes = {}, 1, 0, 0
    local function remember(name)
      if retired[name] or refused[name] then return end
      past_tail = past_tail + 1
      past[past_tail] = name
      if past_tail - past_head + 1 > cfg.max_nodes then
        local old = past[past_head]
        past[past_head], past_head = nil, past_head + 1
        retired[old], refused[old] = nil, nil
      end
    end
    local arrived        -- the at of the message being received, or nil

    -- ---- work in steps ---------------------------------------------------
    -- A node may hold max_roles roles (100,000), each a stand-in endpoint
    -- here, and a send of a megabyte may carry a million topics: applied
    -- in one activation, a large snapshot took 1-2 s and the activation
    -- budget killed the driver.  So such work is queued as jobs, done at
    -- most STEPS steps (a stand-in made or ended, a topic delivered, a
    -- held announcement taken, a role put in a part) per activation, the
    -- rest by a continuation.  While a job waits, the driver reads nothing
    -- more from NATS (the sends and feedback of known nodes included):
    -- what arrived after a snapshot is not taken before it.
    local jobs, jobs_head, jobs_tail = {}, 1, 0
    local steps = 0             -- taken in this activation
    local pending = false       -- a continuation (go_on) is queued
    local function step()
      if steps == STEPS then return false end
      steps = steps + 1
      if steps > M.stats.max_steps then M.stats.max_steps = steps end
      return true
    end
    local go_on
    -- job() -> true when done, false when the steps ran out first.
    local function queue(job)
      jobs_tail = jobs_tail + 1
      jobs[jobs_tail] = job
      if not pending then
        pending = true
        P(market.yield(go_on))
      end
    end
    -- A job calling fn(k) for k = first, ..., last, a step each; done at
    -- once, what is left not done, when alive (if given) says false.
    local function each_step(first, last, fn, alive)
      local k = first
      return function()
        while k <= last do
          if alive and not alive() then return true end
          if not step() then return false end
          fn(k)
          k = k + 1
        end
        return true
      end
    end
    -- Go on with the jobs, in order: true when none is left.
    local function run_jobs()
      while jobs_head <= jobs_tail do
        if not jobs[jobs_head]() then return false end
        jobs[jobs_head], jobs_head = nil, jobs_head + 1
      end
      return true
    end

    -- msg: a message, or its encoding.
    local function publish(subject, msg)
      if not connected then M.stats.dropped = M.stats.dropped + 1; return end
      local bytes, why = msg, nil
      if type(msg) ~= "string" then bytes, why = encode(msg) end
      if not bytes then
        M.stats.dropped = M.stats.dropped + 1
        warn("cannot publish to %s: %s", subject, why)
        return
      end
      local ok, perr = conn:publish(subject, bytes)
      if ok then M.stats.sent = M.stats.sent + 1
      else
        M.stats.dropped = M.stats.dropped + 1
        warn("cannot publish to %s: %s", subject, perr)
      end
    end

    -- Whether bytes fit in one NATS message (the server's max_payload).
    local function fits(bytes)
      local max = conn:max_payload()
      return max == 0 or #bytes <= max
    end

    -- Our roles as a hello (kind "hello") or a snapshot: one message when
    -- it fits in one and holds at most PART_ROLES roles, else "hello-part"
    -- ("snapshot-part") messages k of n with the roles in order, each of
    -- at most PART_ROLES roles and as full as the server's max_payload
    -- lets it be (docs/cluster.md: the wire protocol).  Many roles may
    -- make more nodes than a term may have: they go in parts too, each of
    -- at most as many bytes as the size limit counts nodes (a node takes
    -- a byte at least).  The roles are taken, and the first message
    -- published, now; the other parts one an activation (a job), so that
    -- a hundred thousand roles do not hold one activation past its budget
    -- (announcements made meanwhile follow on NATS the parts before them,
    -- and a receiver holds them until the last part is in: handle).
    local WRAP = #to_cbor(nil) - 1            -- what every encoding starts with
    local function publish_roles(subject, kind)
      local ids, rs, sseq = {}, {}, seq
      for k = 1, order.last do
        local id = order.ids[k]
        if id then ids[#ids + 1], rs[#rs + 1] = id, roles[id] end
      end
      local function item(k)
        local r = rs[k]
        return { ids[k], r[1], r[2], r[3] }
      end
      local max, pkind = conn:max_payload(), kind .. "-part"
      if #ids <= PART_ROLES then
        local list = {}
        for k = 1, #ids do list[k] = item(k) end
        local whole = encode({ M.VERSION, kind, me, inc, sseq, list })
        if whole and fits(whole) then return publish(subject, whole) end
      end
      local limit = market.term_size_limit()
      if max == 0 or max > limit then max = limit end
      -- An empty part, its k and n the largest they can be, and the room
      -- for the roles' array head past one item.  Each role's size (as
      -- deep as a part holds it: [..., [r]]) was taken by its add.
      local room = #to_cbor({ M.VERSION, pkind, me, inc, sseq, math.maxinteger, math.maxinteger, {} }) + 8
      local parts, first, count, used, lost = {}, nil, 0, room, 0
      for k = 1, #rs do
        local size = rs[k].size
        if room + size > max then
          lost = lost + 1       -- (the server's limit fell since its add, which checked the rest)
        else
          if first and (used + size > max or count == PART_ROLES) then
            parts[#parts + 1], first, count, used = { first, k - 1 }, nil, 0, room
          end
          if not first then first = k end
          count, used = count + 1, used + size
        end
      end
      if first or #parts == 0 then parts[#parts + 1] = { first or 1, first and #rs or 0 } end
      if lost > 0 then
        warn("%d roles larger than NATS's max_payload (%d bytes) or the term limits left out of a %s",
             lost, max, kind)
      end
      local function part(j)
        local list = {}
        for k = parts[j][1], parts[j][2] do
          if room + rs[k].size <= max then list[#list + 1] = item(k) end
        end
        publish(subject, { M.VERSION, pkind, me, inc, sseq, j, #parts, list })
      end
      part(1)
      if #parts == 1 then return end
      local j = 2
      queue(function()
        -- (a part of PART_ROLES roles is an activation's steps)
        while j <= #parts do
          if steps > 0 then return false end
          steps = STEPS
          if steps > M.stats.max_steps then M.stats.max_steps = steps end
          part(j)
          j = j + 1
        end
        return true
      end)
    end

    -- ---- stand-ins -------------------------------------------------------

    local function standin_add(node, n, id, o, i, inner)
      local ctor = CTOR[o][i]
      if n.roles[id] then return end           -- known already (a peer repeating itself)
      local t = topic(inner)
      local name = ("%s#%d"):format(node, id)
      local key = role_key(o, i, t)
      local r = { o, i, inner, t = t, name = name, key = key, at = 0 }
      n.roles[id] = r
      order_add(n.order, id, r)
      n.nroles = n.nroles + 1
      own_pres[key] = (own_pres[key] or 0) + 1
      conn:role(node, id, o, t)
      P(ctor(t, name))
    end

    -- Stand-in r ends.
    local function standin_end(r, reason)
      own_abs[r.key] = (own_abs[r.key] or 0) + 1
      P(market.delete_endpoint(r.name, reason))
    end

    local function standin_del(node, n, id, reason)
      local r = n.roles[id]
      if not r then return end
      n.roles[id] = nil
      n.nroles = n.nroles - 1
      order_del(n.order, r, n.roles)
      conn:unrole(node, id)
      standin_end(r, reason)
    end

    -- Every role of node name goes, with reason; the node is forgotten
    -- now (the forwarder with it), its stand-ins end in steps.  (A new
    -- incarnation's stand-ins, of the same names, come from jobs queued
    -- after this one.)
    local function forget(name, reason)
      local n = nodes[name]
      if not n then return end
      nodes[name] = nil
      nnodes = nnodes - 1
      conn:forget(name)
      local ids = n.order.ids
      queue(each_step(1, n.order.last, function(k)
        local id = ids[k]
        if id then standin_end(n.roles[id], reason) end
      end))
    end

    local function lost_reason(name, why)
      return ("cluster: node %s lost (%s)"):format(name, why)
    end

    -- Node name would hold more than cfg.max_roles roles here: each is an
    -- endpoint of this VM, and a peer (buggy, or not a node at all) could
    -- grow them without end.  Its roles go, and this incarnation is not
    -- heard again: a restarted node (a new incarnation) is.
    local function cut_off(name, n)
      remember(name)
      refused[name] = n.inc
      warn("node %s has more than %d roles (max_roles): cut off until it restarts",
           name, cfg.max_roles)
      forget(name, lost_reason(name, ("more than %d roles"):format(cfg.max_roles)))
    end

    -- The node of a message, made or renewed: a new incarnation of a name
    -- we knew means the old one is gone.
    local function node_of(name, ninc)
      local n = nodes[name]
      if n and n.inc ~= ninc then
        remember(name)
        local r = retired[name] or {}
        retired[name] = r
        if #r == RETIRED then table.remove(r, 1) end
        r[#r + 1] = n.inc
        forget(name, lost_reason(name, "restarted"))
        n = nil
      end
      if not n then
        n = { inc = ninc, seq = nil, roles = {}, nroles = 0, order = new_order() }
        nodes[name] = n
        nnodes = nnodes + 1
        conn:node(name, prefix .. ".node." .. name, envelope("send", name, ninc),
                  envelope("feedback", name, ninc))
      end
      n.heard = arrived or clock()
      return n
    end

    -- Make node n's roles those of a snapshot taken at seq: what went is
    -- withdrawn, what is new is added, what stayed stays (no duplicates);
    -- in steps (a job), then done(), if the node is still known.
    local function apply_snapshot(name, n, nseq, list, done)
      if #list > cfg.max_roles then return cut_off(name, n) end
      local keep, k, gone = {}, 1, nil
      queue(function()
        if nodes[name] ~= n then return true end        -- forgotten meanwhile
        while k <= #list do
          if not step() then return false end
          local r = list[k]
          keep[r[1]] = true
          standin_add(name, n, r[1], r[2], r[3], r[4])
          k = k + 1
        end
        if not gone then
          gone = {}
          local ids = n.order.ids
          for j = 1, n.order.last do
            local id = ids[j]
            if id and not keep[id] then gone[#gone + 1] = id end
          end
          k = 1
        end
        while k <= #gone do
          if not step() then return false end
          standin_del(name, n, gone[k], nil)
          k = k + 1
        end
        n.seq, n.syncing = nseq, nil
        if done then done() end
        return true
      end)
    end

    -- Ask node name for a snapshot, again only when the last question
    -- went unanswered for two heartbeats.
    local function want_snapshot(name, n)
      local now = clock()
      if n.syncing and now - n.syncing < 2 * cfg.heartbeat_ms then return end
      n.syncing = now
      publish(prefix .. ".node." .. name, { M.VERSION, "want", me, inc })
    end

    -- An announcement numbered nseq from n: true when it is the next one
    -- (then apply it); a gap asks for a snapshot, an old one is dropped.
    local function in_order(name, n, nseq)
      if n.seq == nil or n.syncing then want_snapshot(name, n); return false end
      if nseq <= n.seq then return false end
      if nseq > n.seq + 1 then want_snapshot(name, n); return false end
      n.seq = nseq
      return true
    end

    -- ---- local roles ------------------------------------------------------

    -- A role whose add does not fit in one NATS message is not announced
    -- (nor its del): a warning says so, and the sequence does not move,
    -- so the other nodes stay in step with the roles they can hold.  So
    -- is one that cannot be encoded: a legal topic may pass the term
    -- limits inside a message (to_cbor raised, and the driver failed).
    -- A hello holds it two levels deeper than an add: a role announced
    -- and then left out of a snapshot would be gone for whoever got it.
    local function announce_add(o, i, t)
      local key = role_key(o, i, t)
      local add, why = encode({ M.VERSION, "add", me, inc, seq + 1, nextid + 1, o, i, t.topic })
      local item                -- (and as a hello of that one role holds it; its size in a part)
      if add then
        why = select(2, encode({ M.VERSION, "hello", me, inc, seq + 1, { { nextid + 1, o, i, t.topic } } }))
        item = encode({ { { nextid + 1, o, i, t.topic } } })
      end
      if why then
        M.stats.dropped = M.stats.dropped + 1
        warn("a %s %s of %s cannot be sent (%s): other nodes do not see it", o, i, repr(t, 200), why)
        return
      end
      if not fits(add) then
        M.stats.dropped = M.stats.dropped + 1
        warn("a %s %s of %s is %d bytes, over NATS's max_payload (%d): other nodes do not see it",
             o, i, repr(t, 200), #add, conn:max_payload())
        return
      end
      nextid, seq = nextid + 1, seq + 1
      roles[nextid] = { o, i, t.topic, size = #item - WRAP - 2, at = 0 }
      order_add(order, nextid, roles[nextid])
      local ids = bykey[key] or {}
      bykey[key] = ids
      ids[#ids + 1] = nextid
      publish(ALL, add)
    end

    local function announce_del(o, i, t, reason)
      local ids = bykey[role_key(o, i, t)]
      if not ids then return end
      local id = table.remove(ids)
      if #ids == 0 then bykey[role_key(o, i, t)] = nil end
      local r = roles[id]
      roles[id] = nil
      order_del(order, r, roles)
      seq = seq + 1
      if reason ~= nil and not market.is_term(reason) then reason = tostring(reason) end
      local del = encode({ M.VERSION, "del", me, inc, seq, id, reason })
      if not del or not fits(del) then
        -- A reason too large for one NATS message travels cut short (a
        -- string) or as its text cut short, with "...": a del not sent
        -- would lose it, and the sequence would show a gap.  So does one
        -- past the term limits inside the del (a reason as deep as a
        -- term may be), as its text.
        local room = conn:max_payload() - #to_cbor({ M.VERSION, "del", me, inc, seq, id, "" }) - 16
        room = math.max(room, 0)
        reason = type(reason) == "string" and reason:sub(1, room) .. "..." or repr(reason, room)
        del = to_cbor({ M.VERSION, "del", me, inc, seq, id, reason })
      end
      publish(ALL, del)
    end

    -- What the forwarder's observers see, handed over as it happens.
    local function on_presence(o, i, t)
      local key = role_key(o, i, t)
      local n = own_pres[key]
      if n then own_pres[key] = n > 1 and n - 1 or nil; return end
      announce_add(o, i, t)
    end
    local function on_absence(o, i, t, reason)
      local key = role_key(o, i, t)
      local n = own_abs[key]
      if n then own_abs[key] = n > 1 and n - 1 or nil; return end
      announce_del(o, i, t, reason)
    end

    -- ---- what arrives -----------------------------------------------------

    local handle = {}
    function handle.hello(m, name, n)
      apply_snapshot(name, n, m[5], m[6], function()
        publish_roles(prefix .. ".node." .. name, "snapshot")
      end)
    end
    function handle.snapshot(m, name, n)
      -- An answer older than what we have (a second answer to two
      -- questions) would take back roles announced since.
      if n.seq and not n.syncing and m[5] < n.seq then return end
      apply_snapshot(name, n, m[5], m[6])
    end
    function handle.want(_m, name)
      publish_roles(prefix .. ".node." .. name, "snapshot")
    end
    -- The announcements (and heartbeats) held while a node's parts came
    -- are taken now, in order, in steps.
    local function replay(name, n)
      local held = n.held
      n.held = nil
      if not held or #held == 0 then return end
      queue(each_step(1, #held, function(k) handle[held[k][2]](held[k], name, n) end,
                      function() return nodes[name] == n end))
    end
    -- Parts k of n of a hello (snapshot), gathered in n.parts and taken
    -- whole once the last is in.  A part out of turn (one was dropped)
    -- discards what was gathered: the heartbeats then show the gap, and
    -- a snapshot is asked for.  The sender publishes its parts over
    -- several activations, and what it announces meanwhile follows the
    -- parts before it: the node's add, del and heartbeat are held from
    -- part 1 on (n.held, at most max_roles of them) and taken after the
    -- hello (snapshot).  A set that is not whole within lost_after_ms of
    -- its part 1 (its last part lost, or never sent: any NATS client may
    -- publish a part 1 in a node's name) is given up by tick: what it held
    -- is taken, and a heartbeat's gap asks for a snapshot.  Held for ever,
    -- the node's adds, dels and heartbeats were never taken, and nothing
    -- asked for a snapshot again.
    local function part_of(kind)
      return function(m, name, n)
        local pseq, k, count, list = m[5], m[6], m[7], m[8]
        if k == 1 then
          n.parts = { kind = kind, seq = pseq, count = count, got = 0, list = {},
                      since = arrived or clock() }
          n.held = n.held or {}
        end
        local p = n.parts
        if not p or p.kind ~= kind or p.seq ~= pseq or p.count ~= count or p.got ~= k - 1 then
          n.parts = nil
          return replay(name, n)
        end
        if #p.list + #list > cfg.max_roles then
          n.parts, n.held = nil, nil
          return cut_off(name, n)
        end
        table.move(list, 1, #list, #p.list + 1, p.list)
        p.got = k
        if k < count then return end
        n.parts = nil
        handle[kind]({ M.VERSION, kind, name, n.inc, pseq, p.list }, name, n)
        replay(name, n)
      end
    end
    handle["hello-part"], handle["snapshot-part"] = part_of("hello"), part_of("snapshot")
    function handle.add(m, name, n)
      if not in_order(name, n, m[5]) then return end
      if n.nroles >= cfg.max_roles and not n.roles[m[6]] then return cut_off(name, n) end
      standin_add(name, n, m[6], m[7], m[8], m[9])
    end
    function handle.del(m, name, n)
      if in_order(name, n, m[5]) then standin_del(name, n, m[6], m[7]) end
    end
    function handle.heartbeat(m, name, n)
      if n.seq ~= m[5] then want_snapshot(name, n) end
    end
    function handle.bye(_m, name)
      forget(name, ("cluster: node %s left"):format(name))
    end
    -- (counted as delivered, and not sent on by the forwarder; in steps,
    -- a topic each, as the forwarder's path delivers them)
    local function deliver_all(kind)
      return function(m)
        queue(each_step(5, #m, function(k) conn:deliver(kind, topic(m[k])) end))
      end
    end
    handle.send, handle.feedback = deliver_all("send"), deliver_all("feedback")

    -- What the forwarder did not deliver: anything but sends (feedback)
    -- from a node known under that incarnation, read and checked whole.
    local function receive(data)
      local m, why = from_cbor(data)
      why = why or wrong(m)
      if why then
        M.stats.malformed = M.stats.malformed + 1
        warn("ignoring a malformed message: %s", why)
        return
      end
      if m[3] == me then                      -- (we do not hear ourselves: no-echo)
        M.stats.malformed = M.stats.malformed + 1
        warn("another node calls itself %s: its messages are ignored (node names must be unique)", me)
        return
      end
      local name = m[3]
      for _i, old in ipairs(retired[name] or {}) do
        if old == m[4] then
          M.stats.malformed = M.stats.malformed + 1
          warn("ignoring node %s's incarnation %d, which a later one replaced (two nodes with one name?)",
               name, old)
          return
        end
      end
      if refused[name] == m[4] then                 -- cut off (max_roles)
        M.stats.malformed = M.stats.malformed + 1
        return
      end
      -- Names past max_nodes (made up, most likely: each would cost a
      -- record, a want asked of it, its roles) are not heard.
      if not nodes[name] and nnodes >= cfg.max_nodes then
        M.stats.malformed = M.stats.malformed + 1
        warn("more than %d nodes (max_nodes): ignoring node %s", cfg.max_nodes, name)
        return
      end
      M.stats.received = M.stats.received + 1
      if m[2] == "bye" then
        -- (a bye from an incarnation not known yet has no roles to end)
        if nodes[name] and nodes[name].inc == m[4] then handle.bye(m, name) end
        return
      end
      local n = node_of(name, m[4])
      if n.held and HELD[m[2]] then                 -- (a hello or snapshot in parts is coming)
        if #n.held < cfg.max_roles then n.held[#n.held + 1] = m end
        return
      end
      -- A node heard of first through anything but its roles is asked
      -- for them (add, del and heartbeat would ask too).
      if n.seq == nil and not ROLES[m[2]] then want_snapshot(name, n) end
      -- A whole hello or snapshot describes all of the node's roles: a set
      -- of parts still coming is given up for it, and what it held is
      -- taken after it.
      local whole = (m[2] == "hello" or m[2] == "snapshot") and n.parts ~= nil
      if whole then n.parts = nil end
      handle[m[2]](m, name, n)
      if whole then replay(name, n) end
    end

    local function hello()
      publish_roles(ALL, "hello")
    end
    local join                -- on "connected" (below)

    -- Up to 256 events at a time, and before each at most 256 sends and
    -- feedback the forwarder's path delivers in C, topic by topic (256 in
    -- a row end the turn, in the middle of a batch maybe): the loop's
    -- other work goes on.
    -- A job waiting is done first: until it is, nothing more is read.
    local function on_readable()
      steps = 0
      if not run_jobs() then return end
      for _i = 1, 256 do
        local ev, subject, data, at = conn:next(256)
        if not ev then return end          -- (false: more waits)
        if ev == "message" then
          arrived = at
          receive(data)
          arrived = nil
        elseif ev == "malformed" then      -- (sends the forwarder's path refused)
          local why = subject
          M.stats.malformed = M.stats.malformed + 1
          warn("ignoring a malformed message: %s", why)
        elseif ev == "disconnected" then
          -- What was lost is absence: every remote role goes now, and
          -- comes back with the snapshots that answer our hello.
          connected = false
          conn:connected(false)
          warn("disconnected from NATS: the other nodes are absent until it is back")
          local names = {}
          for name in pairs(nodes) do names[#names + 1] = name end
          table.sort(names)
          for _j, name in ipairs(names) do forget(name, lost_reason(name, "disconnected from NATS")) end
        elseif ev == "connected" then
          join()
        elseif ev == "failed" then
          -- No process of ours has a cluster endpoint yet: the failure is
          -- this process's, with the reason.
          conn:close()
          error(("cannot connect to NATS at %s: %s"):format(servers(cfg.urls), subject), 0)
        elseif ev == "reconnected" then
          connected = true
          conn:connected(true)
          market.log.info("market.cluster: reconnected to NATS")
          hello()
        elseif ev == "closed" then
          -- libnats gave up (the server refused us on a reconnection):
          -- no reconnection comes, so the driver fails, saying why.
          error(("the connection to NATS at %s was closed: %s"):format(servers(cfg.urls),
                subject ~= "" and subject or "no reason given"), 0)
        end
        -- (what the event queued, done before the next; if the steps ran
        -- out, the continuation goes on and the descriptor stays readable)
        if not run_jobs() then return end
      end
      -- More waits: the descriptor stays readable, we are called again.
    end

    -- Heartbeats, and the nodes not heard from for lost_after_ms.
    local tick
    local dropped_in = 0           -- of conn:dropped(), reported already
    local function arm()
      P(market.subscriber(alarm(market.monotonic() + cfg.heartbeat_ms), { name = "tick", on_message = tick }))
    end
    function tick(_s, m)
      if not alarm:is(m) then return end   -- send(market._): not the heartbeat's time
      P(market.delete_endpoint("tick"))
      if connected then publish(ALL, { M.VERSION, "heartbeat", me, inc, seq }) end
      -- Judged in the queue's time: what is still waiting arrived after
      -- everything heard, so a node is late only past the oldest of it.
      local now, late = conn:waiting() or clock(), {}
      for name, n in pairs(nodes) do
        n.heard = math.max(n.heard, conn:heard(name) or n.heard)
        if now - n.heard > cfg.lost_after_ms then late[#late + 1] = name end
        if n.parts and now - n.parts.since > cfg.lost_after_ms then   -- (part_of)
          n.parts = nil
          replay(name, n)
        end
      end
      table.sort(late)
      for _i, name in ipairs(late) do
        forget(name, lost_reason(name, ("no heartbeat for %d ms"):format(cfg.lost_after_ms)))
      end
      local dropped = conn:dropped()
      if dropped > dropped_in then
        warn("%d messages from NATS dropped: the loop fell behind", dropped - dropped_in)
        dropped_in = dropped
      end
      local oversize = conn:oversize()
      if oversize > 0 then
        warn("%d sends or feedback over NATS's max_payload (%d bytes) not sent to other nodes",
             oversize, conn:max_payload())
      end
      arm()
    end

    -- The continuation: the jobs go on, and again while some are left.
    go_on = function()
      pending = false
      steps = 0
      if not run_jobs() and not pending then
        pending = true
        P(market.yield(go_on))
      end
    end

    local function leave()
      if joined then publish(ALL, { M.VERSION, "bye", me, inc }) end
      conn:close()
      P(market.quit())
    end

    -- Connected: into the cluster.  Until then this node holds no
    -- cluster role and forwards nothing; the local roles already there
    -- are announced now, as the observers see them.
    function join()
      connected, joined = true, true
      local ok, serr = conn:subscribe(ALL)
      if ok then ok, serr = conn:subscribe(MINE) end
      if not ok then
        conn:close()
        error(("cannot subscribe on NATS: %s"):format(serr), 0)
      end
      -- The observers see each other: those are our own presences.
      own_pres[role_key("publisher", "everything", topic(_))] = 1
      own_pres[role_key("subscriber", "everything", topic(_))] = 1
      conn:start(M.stats, topic(_), envelope("send", me, inc), envelope("feedback", me, inc),
                 LEAD.send, LEAD.feedback, on_presence, on_absence)
      hello()
      arm()
    end

    -- One driver of a cluster in a VM: two take each other's stand-ins for
    -- roles of their own and announce them to each other without end.
    -- Each says it drives the cluster here, and the later of two (the
    -- greater pid) fails, saying which runs, before it joins: the
    -- presence comes before anything NATS says (it is queued as the
    -- endpoints are added, the connection's readiness later).
    local mypid = market.self()
    P(market.publisher(driving(cfg.cluster, mypid), { name = "driving" }),
      market.observe_publishers(driving(cfg.cluster, _), { name = "drivers",
        on_presence = function(_, r)
          local other = r.topic.pid
          if other >= mypid then return end
          conn:close()
          error(("a driver of cluster %s already runs in this VM (pid %d): one driver " ..
                 "per cluster and VM"):format(cfg.cluster, other), 0)
        end }),
      market.subscriber(readable(conn:fd()), { name = "nats", on_message = on_readable }),
      market.subscriber(market.ground.stopping(_), { name = "stopping", on_presence = leave }),
      -- (Not the wildcard message, send(market._), which reaches every
      -- subscriber: the node left its cluster.)
      market.subscriber(M.leave_record(me), { name = "leave", on_message = function(_, m)
        if M.leave_record:is(m) then return leave() end
      end }))
  end
end

-- leave([node]): the action that makes the driver of node (default: every
-- driver in the VM) leave the cluster, saying so, and quit.
M.leave_record = market.record("market-cluster:leave", "node")
function M.leave(node)
  if node ~= nil and type(node) ~= "string" then
    error("market.cluster.leave: node must be a string, got " .. type(node), 2)
  end
  return market.send(M.leave_record(node == nil and _ or node))
end

-- Whether a URL of the list says tls://: then TLS with the system's CAs,
-- and the name checked, unless the tls option says otherwise (any of them,
-- not the first only: libnats would speak TLS to them all, checking no
-- name).
local function any_tls(urls)
  for _, u in ipairs(urls) do if u:match("^tls://") then return true end end
  return nil
end

-- A URL's host: a name, an IPv4 address, or an IPv6 one without its
-- brackets (nats://user:pass@[::1]:4222).
local function url_host(u)
  local rest = u:match("^%a+://[^/@]*@(.*)$") or u:match("^%a+://(.*)$")
  return rest:match("^%[([^%]]*)%]") or rest:match("^([^/:]*)")
end

-- The driver's tls option (a tcp.tls configuration, or true: the
-- system's CA certificates) as sys.nats_connect takes it: a table of its
-- files and flags, and the host the certificate must name: server_name,
-- else the URLs' one host (a name, or an address: OpenSSL checks it
-- against the certificate's IP addresses).  libnats checks one name for
-- every server, and none unless told: URLs of several hosts with no
-- server_name would have taken any certificate of a trusted CA from any
-- of them (with the system's CAs, anybody's), so they are refused unless
-- verification is off.  nil: no TLS.  Raises on what cannot be done.
local function nats_tls(tls, urls)
  if tls == false and any_tls(urls) then    -- (libnats would speak it, checking nothing)
    error("market.cluster.driver: tls = false, but a URL says tls://", 3)
  end
  if tls == nil or tls == false then return nil end
  local tcp = require "market.tcp"
  if tls == true then tls = tcp.TLS_CLIENT end
  if not tcp.tls_record:is(tls) then
    error("market.cluster.driver: tls must be a tcp.tls configuration or true, got " .. show(tls), 3)
  end
  if tls.pin then error("market.cluster.driver: tls: the NATS connection cannot pin (no pin)", 3) end
  local host = tls.server_name or nil
  if not host and tls.verify then
    local hosts, seen = {}, {}
    for _, u in ipairs(urls) do
      local h = url_host(u)
      if h ~= "" and not seen[h:lower()] then
        seen[h:lower()] = true
        hosts[#hosts + 1] = h
      end
    end
    host = hosts[1]
    if #hosts > 1 then
      error(("market.cluster.driver: tls: the URLs name %d hosts (%s), and libnats checks every " ..
             "server's certificate against one name: give tls.server_name, a name all of their " ..
             "certificates carry"):format(#hosts, table.concat(hosts, ", ")), 3)
    end
  end
  return { ca = tls.ca or nil, cert = tls.cert or nil, key = tls.key or nil, verify = tls.verify,
           host = host }
end

-- driver{url= | urls=, cluster=, node=, heartbeat_ms=, lost_after_ms=,
-- max_roles=, max_nodes=, tls=}: the
-- spawn action that starts the driver.  cluster.node is then the node's
-- name (nil until a driver was made), for programs that name things
-- uniquely across the cluster (examples/chat.lua).
local DRIVER_KEYS = { "url", "urls", "cluster", "node", "heartbeat_ms", "lost_after_ms",
                      "max_roles", "max_nodes", "tls" }
function M.driver(opts)
  if type(opts) ~= "table" then
    error("market.cluster.driver: the options must be a table, got " .. type(opts), 2)
  end
  -- A misspelt key ({nodes = ...}) was ignored without a word (worded as
  -- market.spawn's and market.trace's).
  for key in next, opts do
    local known = false
    for i = 1, #DRIVER_KEYS do if DRIVER_KEYS[i] == key then known = true; break end end
    if not known then
      error(("market.cluster.driver: no option %s (%s)"):format(tostring(key),
            table.concat(DRIVER_KEYS, ", ")), 2)
    end
  end
  local urls = opts.urls or { opts.url }
  if type(urls) ~= "table" or #urls == 0 then
    error("market.cluster.driver: url (a string) or urls (a list of strings) is needed", 2)
  end
  for i = 1, #urls do                     -- (a hole is no URL)
    local u = urls[i]
    if type(u) ~= "string" or not (u:match("^nats://") or u:match("^tls://")) then
      error(("market.cluster.driver: URL %d must be a string nats://HOST:PORT (or tls://), got %s")
            :format(i, show(u)), 2)
    end
  end
  local host, pid = sys.host_pid()
  local cfg = {
    urls = urls,
    cluster = check_name("cluster", opts.cluster or "market"),
    node = check_name("node", opts.node or (host:gsub("[^%w_%-]", "-") .. "-" .. pid)),
    heartbeat_ms = check_ms("heartbeat_ms", opts.heartbeat_ms, 500),
    tls = nats_tls(opts.tls == nil and any_tls(urls) or opts.tls, urls),
  }
  cfg.lost_after_ms = check_ms("lost_after_ms", opts.lost_after_ms, 4 * cfg.heartbeat_ms)
  for key, default in pairs { max_roles = 100000, max_nodes = 10000 } do
    local v = opts[key] == nil and default or opts[key]
    if math.type(v) ~= "integer" or v < 1 then
      error(("market.cluster.driver: %s must be an integer above 0, got %s"):format(key, show(opts[key])), 2)
    end
    cfg[key] = v
  end
  M.node = cfg.node
  -- Tells a restarted node of the same name from the one before it.
  cfg.incarnation = math.random(1, math.maxinteger)
  return market.spawn(boot(cfg), { name = "cluster " .. cfg.node })
end

function M.inspect()
  local s = M.stats
  return { sent = s.sent, received = s.received, delivered = s.delivered, dropped = s.dropped,
           malformed = s.malformed, max_steps = s.max_steps }
end

return M
