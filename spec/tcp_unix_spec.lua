-- tcp_unix_spec.lua: Unix domain sockets in the tcp driver (docs/tcp.md,
-- "Unix domain sockets"): tcp.listener(path) and tcp.address(path, "unix"),
-- with the same channel records and behaviour as TCP.  Every socket file
-- lives in a directory of its own, removed at the end.
package.path = "spec/support/?.lua;" .. package.path
local market = require "market"
local tcp = require "market.tcp"
local timer = require "market.timer"
local sys = require "market.sys"
local N = require "net"
local ANY, EOF = market._, market.EOF
local send, T = market.send, market.transition_no_state

local function sh(cmd)
  local f = assert(io.popen(cmd))
  local out = f:read("a")
  f:close()
  return out
end

local function exists(path) return os.execute("test -e " .. N.q(path)) == true end
local function is_socket(path) return os.execute("test -S " .. N.q(path)) == true end

-- Straight-line: subscribe to tcp.listening(path, _) (before asking for
-- the listener: one that fails is gone at once); listening_event(path):
-- its next presence or absence.
-- (Endpoint names are C strings: a path holding a NUL cannot be in one.)
local watch_names = {}
local function watch_listening(path)
  watch_names[path] = "listening? #" .. #watch_names + 1
  watch_names[#watch_names + 1] = path
  market.perform(market.subscriber(tcp.listening(path, ANY), watch_names[path]))
end
local function listening_event(path)
  return market.wait_for(function(e) return e.endpoint == watch_names[path] end)
end

-- N.tcp_client to tcp.address(path, "unix"): it sends `first` at
-- presence, and EOF after the first data.  settings: for its handle.
local function client(id, path, log, first, settings)
  return N.tcp_client(id, tcp.address(path, "unix"), log, {
    settings = settings,
    on_connect = function(out) if first then return T(out(first)) end end,
    on_data = function(_, out) return T(out(EOF)) end })
end

-- N.polite as a session, noting its remote in remotes.
local function echo(remotes)
  return function(remote, here)
    remotes[#remotes + 1] = remote
    return N.polite(remote, here)
  end
end

describe("tcp over Unix domain sockets", function()
  local dir
  before_each(function() dir = sh("mktemp -d"):gsub("%s+$", "") end)
  after_each(function() os.execute("rm -rf " .. N.q(dir)) end)

  it("listens on a path, echoes, tells connections apart, and removes the socket file at the end",
     function()
    local path, remotes, log1, log2 = dir .. "/echo.sock", {}, {}, {}
    local ev1, file_while_listening, gone = nil, nil, {}
    N.run(function()
      watch_listening(path)
      market.perform(N.tcp_serve(path, echo(remotes)))
      ev1 = listening_event(path)
      file_while_listening = is_socket(path)
      -- The observer sees each connection come and go.
      local here = tcp.listener(path)
      market.perform(market.observe_publishers(tcp.channel(ANY, here, ANY), {
        name = "conns",
        on_absence = function(_, _, reason) gone[#gone + 1] = tostring(reason) end }))
      market.perform(client(1, path, log1, "one"))
      N.await({ "done", 1 })
      market.perform(client(2, path, log2, "two"))
      N.await({ "done", 2 })
      N.wait_until(function() return #gone == 2 end)
      market.perform(market.delete_endpoint("conns"), send({ "stop-server", path }))
      local ev = listening_event(path)
      assert.equal("absence", ev.type)
      assert.is_nil(ev.reason)
    end)
    assert.equal("presence", ev1.type)
    assert.are.same(tcp.listening(path, path), ev1.role.topic)
    assert.is_true(file_while_listening)
    assert.is_false(exists(path))
    assert.are.same({ "nil", "nil" }, gone)      -- the connections closed in order
    assert.are.same({ "connected", "data you said one", "data bye", "eof" }, log1)
    assert.are.same({ "connected", "data you said two", "data bye", "eof" }, log2)
    -- A client's socket has no name: the serial tells the connections apart.
    assert.are.same({ tcp.address("", 1), tcp.address("", 2) }, remotes)
  end)

  it("replaces a socket file nobody listens on any more", function()
    local path, remotes, log = dir .. "/stale.sock", {}, {}
    -- perl binds a Unix socket and exits without removing its file.
    assert(os.execute("perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => $ARGV[0], " ..
                      "Listen => 1) or die $!' " .. N.q(path)))
    assert.is_true(is_socket(path))
    local before
    N.run(function()
      market.perform(client("stale", path, log))
      N.await({ "done", "stale" })
      before = log[#log]
      watch_listening(path)
      market.perform(N.tcp_serve(path, echo(remotes)))
      assert.equal("presence", listening_event(path).type)
      market.perform(client("fresh", path, log, "hi"))
      N.await({ "done", "fresh" })
      market.perform(send({ "stop-server", path }))
    end)
    assert.equal("closed connection refused", before)
    assert.are.same({ "connected", "closed connection refused",
                      "connected", "data you said hi", "data bye", "eof" }, log)
    assert.is_false(exists(path))
  end)

  it("leaves alone a socket someone listens on, and a file that is not a socket", function()
    local live, plain = dir .. "/live.sock", dir .. "/plain"
    local f = assert(io.open(plain, "w"))
    f:write("keep me")
    f:close()
    local other = assert(sys.unix_listen(live))
    local ev_live, ev_plain
    N.run(function()
      watch_listening(live)
      watch_listening(plain)
      market.perform(N.tcp_serve(live, echo({})), N.tcp_serve(plain, echo({})))
      ev_live = listening_event(live)
      if ev_live.type == "presence" then ev_live = listening_event(live) end
      ev_plain = listening_event(plain)
      if ev_plain.type == "presence" then ev_plain = listening_event(plain) end
      market.perform(send({ "stop-server", live }), send({ "stop-server", plain }))
    end)
    assert.equal("absence", ev_live.type)
    assert.equal(('cannot listen on "%s": address already in use'):format(live), ev_live.reason)
    assert.equal("absence", ev_plain.type)
    assert.equal(('cannot listen on "%s": a file that is not a socket is in the way'):format(plain),
                 ev_plain.reason)
    assert.is_true(is_socket(live))        -- still the other listener's
    assert.equal("keep me", N.slurp(plain))
    other:close()
    assert.is_false(exists(live))           -- sys.unix_listen's own file goes with it
  end)

  it("does not remove a socket file that another listener put in its place", function()
    local path, other = dir .. "/taken.sock", nil
    N.run(function()
      watch_listening(path)
      market.perform(N.tcp_serve(path, echo({})))
      assert.equal("presence", listening_event(path).type)
      os.remove(path)
      other = assert(sys.unix_listen(path))
      market.perform(send({ "stop-server", path }))
      assert.equal("absence", listening_event(path).type)
    end)
    assert.is_true(is_socket(path))
    other:close()
    assert.is_false(exists(path))
  end)

  it("listens on a path that reads like a listener's host and port", function()
    -- The driver counted observers by a key in which tcp.address(H, 7)
    -- and the path "H:7" were the same: the path's observer was taken
    -- for one more of the address's, and no listener came for it.
    local host_ev, path_ev
    local path = dir .. "/s:7"
    N.run(function()
      local a = tcp.address(dir .. "/s", 7)
      market.perform(market.subscriber(tcp.listening(a, ANY), "addr?"),
                     market.observe_publishers(tcp.channel(ANY, tcp.listener(a), ANY), "addr"))
      repeat
        host_ev = market.wait_for(function(e) return e.endpoint == "addr?" end)
      until host_ev.type == "absence"
      watch_listening(path)
      market.perform(market.observe_publishers(tcp.channel(ANY, tcp.listener(path), ANY), "path"))
      path_ev = listening_event(path)
      market.perform(market.delete_endpoint("path"), market.delete_endpoint("addr"))
    end)
    assert.matches("not a numeric IP address", host_ev.reason)
    assert.equal("presence", path_ev.type)
    assert.equal(path, path_ev.role.topic.bound_port)
  end)

  it("refuses bad paths with a clear reason, listening and connecting", function()
    local long = dir .. "/" .. ("x"):rep(200)
    local reasons, log = {}, {}
    N.run(function()
      for _, p in ipairs { long, "", "a\0b" } do
        watch_listening(p)
        market.perform(N.tcp_serve(p, echo({})))
        local ev = listening_event(p)
        if ev.type == "presence" then ev = listening_event(p) end
        reasons[#reasons + 1] = ev.reason
        market.perform(send({ "stop-server", p }))
      end
      for i, p in ipairs { long, "", dir .. "/missing.sock" } do
        market.perform(client(i, p, log))
        N.await({ "done", i })
      end
    end)
    local n = #long
    assert.equal(('cannot listen on "%s": path of %d bytes is longer than a Unix socket\'s ' ..
                  '(at most 107)'):format(long, n), reasons[1])
    assert.equal('cannot listen on "": empty path', reasons[2])
    assert.equal('cannot listen on "a\\x00b": path holds a NUL byte', reasons[3])
    assert.equal("connected", log[1])
    assert.matches("^closed bad address tcp%-address%(.*: path of " .. n ..
                   " bytes is longer than a Unix socket's %(at most 107%)$", log[2])
    assert.equal('closed bad address tcp-address("", "unix"): empty path', log[4])
    assert.are.same({ "connected", "closed no such file or directory" }, { log[5], log[6] })
    assert.equal(6, #log)
  end)

  it("tries a full listen queue again until the connect timeout", function()
    local path, log1, log2, log3 = dir .. "/full.sock", {}, {}, {}
    local l = assert(sys.unix_listen(path, 0))
    local got
    N.run(function()
      market.perform(client("fills", path, log1))            -- the one the queue holds
      N.wait_until(function() return log1[1] == "connected" end)
      market.perform(client("waits", path, log2, nil, { connect_timeout = 300 }))
      N.await({ "done", "waits" })
      -- A connect that gets in once the server takes the queued one.
      market.perform(client("retries", path, log3, "late", { connect_timeout = 20000 }))
      timer.sleep(100)
      local first = N.accept(l)
      local s = N.accept(l)
      N.wait_fd(s:fd())
      got = s:read()
      s:close()
      N.await({ "done", "retries" })
      first:close()
      N.await({ "done", "fills" })
    end, 20000)
    l:close()
    assert.are.same({ "connected", "closed connect timed out after 300 ms" }, log2)
    assert.equal("late", got)
    assert.are.same({ "connected", "eof" }, log3)
  end)
end)
