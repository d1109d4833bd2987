-- spec/support/net.lua: helpers for the tcp/udp driver and example specs.
local market = require "market"
local N = {}

local ALIVE = { "net-spec", "alive" }

-- run(boot [, timeout_ms]): run boot as straight-line code in a ground VM
-- with the drivers.  A watchdog kills every process if boot has not
-- returned within timeout_ms (default 10 s), so a hang fails the spec
-- instead of stalling the suite.  When boot returns, its process quits
-- (its endpoints go); the VM then runs until everything else has finished.
-- Returns whatever boot returned.
function N.run(boot, timeout_ms)
  local timed_out, results = false, nil
  local ok, err = market.ground_vm(function()
    local watched = false
    market.perform(market.publisher(ALIVE, {
      name = "net-spec-alive",
      on_presence = function() watched = true end }), market.spawn(function()
      local me = market.self()
      local deadline = market.ground.alarm(math.floor(market.now()) + (timeout_ms or 10000))
      return market.transition(nil,
        market.subscriber(ALIVE, {
          on_absence = function() return market.transition_no_state(market.quit()) end }),
        market.subscriber(deadline, {
          on_message = function(_, m)
            if m ~= deadline then return end   -- a spec's message with a wildcard
            timed_out = true
            for pid = 1, 5000 do
              if pid ~= me then market.perform(market.quit(pid, "spec timeout")) end
            end
            return market.transition_no_state(market.quit())
          end }))
    end, { name = "watchdog" }))
    -- The watchdog's subscriber is there before boot runs: a boot that
    -- returns at once would otherwise withdraw ALIVE before the watchdog
    -- could see it go, and the watchdog would wait for its deadline.
    market.wait_until(function() return watched end)
    results = table.pack(boot())
    market.perform(market.quit())
  end, { drivers = true })
  assert(ok == true, "ground_vm failed: " .. tostring(err))
  assert(not timed_out, "the spec timed out (the watchdog killed its processes)")
  return table.unpack(results, 1, results.n)
end

local waits = 0
-- await(topic): straight-line: subscribe to topic, wait for one message
-- on it, unsubscribe; returns the message.
function N.await(topic)
  waits = waits + 1
  local name = "await#" .. waits
  market.perform(market.subscriber(topic, name))
  local ev = market.wait_for(function(e) return e.type == "message" and e.endpoint == name end)
  market.perform(market.delete_endpoint(name))
  return ev.message
end

-- bound(port): straight-line: the kernel's port once the tcp driver
-- listens on `port` (tcp.listening(port, bound) is present).
function N.bound(port)
  local tcp = require "market.tcp"
  market.perform(market.subscriber(tcp.listening(port, market._), "bound?"))
  local ev = market.wait_for(function(e) return e.endpoint == "bound?" end)
  market.perform(market.delete_endpoint("bound?"))
  return ev.role.topic.bound_port
end

-- tcp_client(id, a, log [, opts]): a client process for tcp.handle(id)
-- connecting to address a.  It logs "connected" (the driver's presence),
-- "data <text>", "eof" and "closed <reason>", and on eof or absence sends
-- {"done", id} and quits.  opts.on_connect(out) / opts.on_data(d, out) may
-- return a transition; out(x) is the action sending x on the connection.
-- opts.settings: published for its handle first (tcp.options).
function N.tcp_client(id, a, log, opts)
  local tcp = require "market.tcp"
  local send, T, EOF = market.send, market.transition_no_state, market.EOF
  opts = opts or {}
  local h = tcp.handle(id)
  return market.spawn(function()
    local function out(x) return send(tcp.channel(h, a, x)) end
    local function done() return send({ "done", id }), market.quit() end
    if opts.settings then market.perform(tcp.options(h, opts.settings)) end
    return market.transition(nil,
      market.subscriber(tcp.channel(a, h, market._), {
        name = "in",
        on_message = function(_, m)
          local d = m.subpacket
          if d == EOF then
            log[#log + 1] = "eof"
            return T(done())
          end
          log[#log + 1] = "data " .. d
          if opts.on_data then return opts.on_data(d, out) end
        end,
        on_absence = function(_, _, reason)
          log[#log + 1] = "closed " .. tostring(reason)
          return T(done())
        end }),
      market.publisher(tcp.channel(h, a, market._), {
        name = "out",
        on_presence = function()
          log[#log + 1] = "connected"
          if opts.on_connect then return opts.on_connect(out) end
        end }))
  end, { name = "client " .. tostring(id) })
end

-- polite(remote, here): a session that answers each chunk with "you said
-- <chunk>" and, on EOF, says "bye", half-closes and goes.
function N.polite(remote, here)
  local tcp = require "market.tcp"
  local send, T, EOF = market.send, market.transition_no_state, market.EOF
  return function()
    return market.transition(nil,
      market.subscriber(tcp.channel(remote, here, market._), {
        on_message = function(_, m)
          if m.subpacket == EOF then
            return T(send(tcp.channel(here, remote, "bye")), send(tcp.channel(here, remote, EOF)),
                     market.quit())
          end
          return T(send(tcp.channel(here, remote, "you said " .. m.subpacket)))
        end }),
      market.publisher(tcp.channel(here, remote, market._)))
  end
end

-- snapshot_connected(ready [, client_opts [, before]]): inside a ground VM
-- (N.run), a polite server on a port the kernel picks and one client
-- (tcp_client 1, with client_opts); once ready(log) holds, the snapshot
-- of that moment, then the client closes and the server stops.  before()
-- runs first.  Returns the snapshot, the port and the client's log.
function N.snapshot_connected(ready, client_opts, before)
  local tcp = require "market.tcp"
  local P = market.perform
  local s, log, port, error_ = nil, {}, nil, nil
  N.run(function()
    if before then before() end
    P(N.tcp_serve(0, N.polite))
    port = N.bound(0)
    local a, h = tcp.address("127.0.0.1", port), tcp.handle(1)
    P(N.tcp_client(1, a, log, client_opts))
    N.wait_until(function() return ready(log) end)
    -- protected, so that the connection and the server end either way
    -- (a listener left would keep the VM running)
    local ok, snap = pcall(market.snapshot)
    if ok then s = snap else error_ = snap end
    P(market.send(tcp.channel(h, a, market.EOF)), market.send({ "stop-server", 0 }))
    N.await({ "done", 1 })
  end)
  assert(error_ == nil, tostring(error_))
  return s, port, log
end

-- tcp_serve(port, session): a server process observing the listener on
-- `port` that spawns session(remote, here) for each connection; it quits
-- on {"stop-server", port}.
function N.tcp_serve(port, session)
  local tcp = require "market.tcp"
  local here = tcp.listener(port)
  return market.spawn(function()
    return market.transition(nil,
      market.observe_publishers(tcp.channel(market._, here, market._), {
        on_presence = function(_, role)
          return market.transition_no_state(
            market.spawn(session(role.topic.source, here), { name = "session" }))
        end }),
      market.subscriber({ "stop-server", port }, {
        on_message = function() return market.transition_no_state(market.quit()) end }))
  end, { name = "server " .. tostring(port) })
end

-- ---- raw sockets in straight-line code --------------------------------

local fd_waits = 0
-- wait_fd(fd [, writable]): wait for fd to be readable (or writable): the
-- ground's message, or its absence if the watch fails (not its presence,
-- which only says the watch is on).
function N.wait_fd(fd, writable)
  fd_waits = fd_waits + 1
  local name = "fd#" .. fd_waits
  local ev = writable and market.ground.writable(fd) or market.ground.readable(fd)
  market.perform(market.subscriber(ev, name))
  market.wait_for(function(e) return e.endpoint == name and e.type ~= "presence" end)
  market.perform(market.delete_endpoint(name))
end

-- wait_until(cond): wait (10 ms at a time) until cond() holds.
function N.wait_until(cond)
  local timer = require "market.timer"
  while not cond() do timer.sleep(10) end
end

-- connect(port): a market.sys socket connected to 127.0.0.1:port.
function N.connect(port)
  local sys = require "market.sys"
  local s = assert(sys.tcp_connect(assert(sys.resolve("127.0.0.1", port))[1].sa))
  N.wait_fd(s:fd(), true)
  return s
end

-- accept(l): a connection accepted on the market.sys listening socket
-- l, waiting for one if need be.
function N.accept(l)
  while true do
    local s, err = l:accept()
    if s then return s end
    assert(s == false, err)
    N.wait_fd(l:fd())
  end
end

-- write_all(s, data): write all of data; true, or nil and the error.
function N.write_all(s, data)
  local i = 1
  while i <= #data do
    local n, err = s:write(data, i)
    if not n then return nil, err end
    i = i + n
    if i <= #data then N.wait_fd(s:fd(), true) end
  end
  return true
end

-- read_all(s): read s until end of stream (or an error); the bytes and
-- how it ended ("eof" or the error).
function N.read_all(s)
  local got = {}
  while true do
    N.wait_fd(s:fd())
    local data, err = s:read()
    if data then got[#got + 1] = data
    elseif data == nil then return table.concat(got), err end
  end
end

-- ---- sockets as the kernel sees them -----------------------------------

-- This process's pid (/proc/self is the reader).
local function own_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("l"):match("^%d+")
  f:close()
  return pid
end

-- The established TCP connections (IPv4 and IPv6) whose local port is
-- lport, as {remote_port =, inode =}.  The inode is 0 while a connection
-- waits in a listen queue: its socket has no file until accept().
function N.established(lport)
  local found = {}
  for _, file in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    for line in (N.slurp(file) or ""):gmatch("[^\n]+") do
      local l, r, st, ino = line:match("^%s*%d+: %x+:(%x+) %x+:(%x+) (%x+) %S+ %S+ %S+ +%d+ +%d+ (%d+)")
      if l and tonumber(l, 16) == lport and st == "01" then
        found[#found + 1] = { remote_port = tonumber(r, 16), inode = tonumber(ino) }
      end
    end
  end
  return found
end

-- The inode of the connection from remote port rport to local port lport
-- (see N.established), or nil.
function N.socket_inode(lport, rport)
  for _, c in ipairs(N.established(lport)) do
    if c.remote_port == rport then return c.inode end
  end
end

-- Whether a process has accepted a connection on local port lport.
function N.accepted(lport)
  for _, c in ipairs(N.established(lport)) do
    if c.inode ~= 0 then return true end
  end
  return false
end

-- The descriptor that socket inode ino has in process pid (default: this
-- one), or nil.
function N.fd_of_inode(ino, pid)
  local f = assert(io.popen("ls -l /proc/" .. (pid or own_pid()) .. "/fd 2>/dev/null"))
  local ls = f:read("a")
  f:close()
  return tonumber(ls:match(" (%d+) %-> socket:%[" .. ino .. "%]"))
end

-- no_collections(finally): no garbage collection until the spec ends, so
-- that a socket closes only if market closes it, not because its
-- userdata was collected.  finally: busted's, which is the spec's own (not
-- a global), to restart the collector.
function N.no_collections(finally)
  collectgarbage("stop")
  finally(function() collectgarbage("restart") end)
end

-- kill_named(name): straight-line, inside a VM: quit every process of it
-- whose name matches the pattern `name`, with the reason "killed".
function N.kill_named(name)
  for _, p in ipairs(market.snapshot().vm.processes) do
    if p.name and p.name:find(name) then market.perform(market.quit(p.pid, "killed")) end
  end
end

-- A free TCP (or UDP) port on this host, as the kernel picks them.
function N.free_port(kind)
  local sys = require "market.sys"
  local s = assert(kind == "udp" and sys.udp_bind(0) or sys.tcp_listen(0))
  local port = s:local_port()
  s:close()
  return port
end

-- ---- subprocesses -----------------------------------------------------

-- Shared with the other specs.
local H = require "helpers"
N.market_bin, N.q, N.slurp = H.market_bin, H.quote, H.slurp

-- A shell fragment for specs that signal a `market` started in the
-- background ($pid, its stderr in the file $e): wait until it wrote
-- "ready" (its handlers are in place by then), up to a minute, however
-- slowly a loaded machine or the sanitized build starts it; if it never
-- does, say so and exit 99 rather than signal a program not yet started.
N.AWAIT_READY = [[
      for i in $(seq 1 3000); do grep -q ready $e && break; sleep 0.02; done
      grep -q ready $e || { echo "never ready" >&2; cat $e >&2; kill -KILL $pid; rm -f $e; exit 99; }
]]

function N.sh(cmd)
  local ok, how, code = os.execute(cmd)
  if how == "exit" then return code end
  return 128 + code
end

function N.sleep(secs) os.execute("sleep " .. secs) end

-- Start a shell command in the background (it should `exec` the program so
-- that the pid is the program's), stdin from /dev/null, stdout and stderr
-- to temporary files.  Returns an object: .pid, .stdout(), .stderr(),
-- .running(), .exited() (the status once it has exited), .wait_for(text
-- [, secs]) waits until stderr holds text, .wait_exit([secs]),
-- .stop([signal]) signals it and waits (bounded) for its status, .kill()
-- makes sure it is gone and removes the files.
function N.start_cmd(command)
  local base = os.tmpname()
  local self = { out = base .. ".out", err = base .. ".err", status = base .. ".status" }
  -- The outer shell records the pid, waits, then writes the exit status.
  local cmd = ("( (%s) >%s 2>%s </dev/null & pid=$!; echo $pid >%s.pid; wait $pid; echo $? >%s.tmp; mv %s.tmp %s) >/dev/null 2>&1 &")
    :format(command, self.out, self.err, base, self.status, self.status, self.status)
  assert(os.execute(cmd))
  for _ = 1, 250 do
    local p = N.slurp(base .. ".pid")
    if p and p:match("%d+\n") then self.pid = p:match("%d+"); break end
    N.sleep(0.02)
  end
  os.remove(base .. ".pid")
  os.remove(base)
  assert(self.pid, "could not start " .. command)

  function self.stderr() return N.slurp(self.err) or "" end
  function self.stdout() return N.slurp(self.out) or "" end
  function self.exited()
    local s = N.slurp(self.status)
    return s and tonumber(s:match("%d+"))
  end
  function self.running() return self.exited() == nil end
  function self.wait_for(text, secs)
    for _ = 1, math.floor((secs or 5) / 0.02) do
      if self.stderr():find(text, 1, true) then return true end
      if self.exited() then break end
      N.sleep(0.02)
    end
    return self.stderr():find(text, 1, true) ~= nil
  end
  function self.wait_exit(secs)
    for _ = 1, math.floor((secs or 5) / 0.02) do
      local s = self.exited()
      if s then return s end
      N.sleep(0.02)
    end
    return self.exited()
  end
  function self.stop(sig)
    if self.running() then os.execute("kill -" .. (sig or "TERM") .. " " .. self.pid .. " 2>/dev/null") end
    return self.wait_exit(5)
  end
  function self.kill()
    if self.running() then
      os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
      self.wait_exit(2)
    end
    os.remove(self.out); os.remove(self.err); os.remove(self.status)
  end
  return self
end

-- Start `market script args...` (see start_cmd).
function N.start(script, ...)
  local args = {}
  for i = 1, select("#", ...) do args[#args + 1] = N.q(select(i, ...)) end
  return N.start_cmd(("exec %s %s %s"):format(N.q(N.market_bin()), N.q(script), table.concat(args, " ")))
end

-- Start `market script 0 args...` (a server example taking its port
-- first) and wait until its stderr says "listening on port N": the kernel
-- picks the port, so two suites on one machine never collide.  Returns the
-- server (see start_cmd) and N, or raises with what the server printed.
function N.start_server(script, ...)
  local server, port = N.await_listening(N.start(script, 0, ...), script, 3)
  return server, port
end

-- The same for a server started otherwise (start_cmd): wait for its
-- "listening on port N" line (or, with pattern, a line whose capture is
-- the port); what names it in the error.
function N.await_listening(server, what, level, pattern)
  local port
  for _ = 1, 750 do
    port = tonumber(server.stderr():match(pattern or "listening on port (%d+)"))
    if port or server.exited() then break end
    N.sleep(0.02)
  end
  if not port then
    local err = server.stderr()
    server.kill()
    error(what .. " did not start: " .. err, level or 2)
  end
  return server, port
end

-- Run a shell command with a time bound; returns its stdout and status.
function N.capture(cmd, secs)
  local out = os.tmpname()
  local status = N.sh(("timeout %d sh -c %s >%s 2>&1"):format(secs or 10, N.q(cmd), out))
  local s = N.slurp(out)
  os.remove(out)
  return s, status
end

return N
