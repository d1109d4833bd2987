-- spec/support/nats.lua: nats-server and market nodes as OS processes, for
-- the cluster specs.
--
-- Every process is started in the background with its pid read back, and
-- killed by that pid (S.stop, S.cleanup); every wait is bounded.  Servers
-- listen on loopback, on ports the kernel picks (-p -1; the port is read
-- from the ports file nats-server writes into the spec's own directory).
local H = require "spec.support.helpers"
local S = {}

function S.available()
  return os.execute("command -v nats-server >/dev/null 2>&1") == true
end

local started = {}        -- pid -> true, for cleanup

-- A directory of the spec's own, removed by cleanup.
function S.tmpdir()
  local p = assert(io.popen("mktemp -d /tmp/market-cluster-XXXXXX")):read("l")
  S.dir = p
  return p
end

local function sleep(s) os.execute("sleep " .. s) end
S.sleep = sleep

-- Wall-clock seconds, to the millisecond.
function S.clock()
  local f = assert(io.popen("date +%s.%N"))
  local t = tonumber(f:read("l"))
  f:close()
  return t
end

-- until(fn [, secs]): poll fn every 50 ms for at most secs (default 10);
-- returns fn's first true result, or nil.
function S.wait(fn, secs)
  local n = math.ceil((secs or 10) / 0.05)
  for _ = 1, n do
    local v = fn()
    if v then return v end
    sleep(0.05)
  end
  return nil
end

-- bg(cmd, out): start cmd in the background (stdout and stderr to out);
-- returns its pid.
function S.bg(cmd, out)
  local f = assert(io.popen(("(%s) >%s 2>&1 </dev/null & echo $!"):format(cmd, H.quote(out))))
  local pid = assert(math.tointeger(tonumber(f:read("l"))), "no pid")
  f:close()
  started[pid] = true
  return pid
end

function S.alive(pid)
  return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true
end

-- stop(pid [, signal]): signal pid (default TERM) and wait (at most 10 s)
-- until it is gone.
function S.stop(pid, signal)
  os.execute(("kill -%s %d 2>/dev/null"):format(signal or "TERM", pid))
  assert(S.wait(function() return not S.alive(pid) end, 10), "process " .. pid .. " did not stop")
  started[pid] = nil
end

-- server([opts]): a nats-server on 127.0.0.1: opts.port (default: the
-- kernel picks), opts.cluster (true: listen for routes), opts.routes (a
-- route URL), opts.max_payload (the largest message it takes, in bytes:
-- a config file), opts.auth ("USER:PASSWORD": the one client it lets in).
-- Returns {pid=, port=, url=, route=}.
function S.server(opts)
  opts = opts or {}
  local dir = S.dir or S.tmpdir()
  local n = (S.nservers or 0) + 1
  S.nservers = n
  local pdir = ("%s/ports%d"):format(dir, n)
  os.execute("mkdir -p " .. H.quote(pdir))
  local cmd = ("exec nats-server -a 127.0.0.1 -p %d --ports_file_dir %s"):format(opts.port or -1, H.quote(pdir))
  if opts.cluster or opts.routes then
    cmd = cmd .. (" --cluster nats://127.0.0.1:%d --cluster_name spec"):format(opts.cluster_port or -1)
  end
  if opts.routes then cmd = cmd .. " --routes " .. opts.routes end
  if opts.auth then
    local user, pass = opts.auth:match("^(.-):(.*)$")
    cmd = cmd .. (" --user %s --pass %s"):format(H.quote(user), H.quote(pass))
  end
  if opts.tls then
    cmd = cmd .. (" --tls --tlscert %s --tlskey %s"):format(H.quote(opts.tls.cert), H.quote(opts.tls.key))
  end
  if opts.max_payload then
    local conf = ("%s/nats%d.conf"):format(dir, n)
    local f = assert(io.open(conf, "w"))
    f:write(("max_payload: %d\n"):format(opts.max_payload))
    f:close()
    cmd = cmd .. " -c " .. H.quote(conf)
  end
  local pid = S.bg(cmd, ("%s/nats%d.log"):format(dir, n))
  -- (Read whole: the server writes the file while it may be read, and a
  -- file read half written had no "nats" entry yet.)
  local ports = S.wait(function()
    local text = H.slurp(("%s/nats-server_%d.ports"):format(pdir, pid))
    return text and text:match('"nats":%["%a+://[^"]+"') and text
  end, 10)
  assert(ports, "nats-server did not start: " .. (H.slurp(("%s/nats%d.log"):format(dir, n)) or ""))
  local url = ports:match('"nats":%["(%a+://[^"]+)"')
  local route = ports:match('"cluster":%["(nats://[^"]+)"')
  local port = math.tointeger(tonumber(url:match(":(%d+)$")))
  if opts.tls then url = "tls://localhost:" .. port end   -- (the name its certificate has)
  return { pid = pid, url = url, port = port, route = route }
end

-- Prepended to every node's script: output by lines, and an end after
-- two minutes whatever happens (a node is killed by pid, SIGKILL included:
-- no `timeout` process may stand between).
local WATCHDOG = [[
io.stdout:setvbuf("line")
require("market").perform(require("market").spawn(function()
  local market = require "market"
  local deadline = market.ground.alarm(market.now() + 120000)
  return market.transition(nil, market.subscriber(deadline, { on_message = function(_, m)
    if m == deadline then return market.transition_no_state(market.exit(9)) end  -- not send(_)
  end }))
end, { name = "spec-watchdog" }))
]]

-- node(script, opts): `market --cluster URL --node NAME script` in the
-- background; opts.url, opts.name, opts.cluster (default "spec"),
-- opts.args; opts.file: run that script (script is then nil);
-- opts.own_driver: no --cluster (the script starts its driver); opts.env:
-- environment variables for it, {NAME = value}.  Its output goes to a file: node.out() reads it, node.wait(s
-- [, secs]) waits for a line containing the plain text s.
function S.node(script, opts)
  local dir = S.dir or S.tmpdir()
  local path = ("%s/%s.lua"):format(dir, opts.name)
  local f = assert(io.open(path, "w"))
  if opts.file then   -- an existing script, run with the node's args
    script = ("return assert(loadfile(%q))(...)\n"):format(opts.file)
  end
  f:write(WATCHDOG, script)
  f:close()
  local out = ("%s/%s.out"):format(dir, opts.name)
  local url = opts.url .. "/" .. (opts.cluster or "spec")
  local cluster = opts.own_driver and "" or ("--cluster %s --node %s"):format(H.quote(url), opts.name)
  local env = {}
  for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "=" .. H.quote(v) end
  local pid = S.bg(("exec env %s %s %s %s %s %s"):format(table.concat(env, " "),
    H.quote(H.market_bin()), cluster, opts.options or "", H.quote(path), opts.args or ""), out)
  local node = { pid = pid, name = opts.name }
  function node.out() return H.slurp(out) or "" end
  -- The port a server among its lines says it listens on.
  function node.port()
    local p = S.wait(function() return node.out():match("listening on port (%d+)") end, 10)
    assert(p, "node " .. opts.name .. " did not listen: " .. node.out())
    return math.tointeger(tonumber(p))
  end
  function node.has(s, from)
    return node.out():find(s, from or 1, true) ~= nil
  end
  function node.wait(s, secs)
    local ok = S.wait(function() return node.has(s) end, secs)
    assert(ok, ("node %s: no %q within %s s; its output:\n%s"):format(opts.name, s, secs or 10, node.out()))
  end
  function node.count(s)
    local n, from = 0, 1
    local text = node.out()
    while true do
      local i, j = text:find(s, from, true)
      if not i then return n end
      n, from = n + 1, j + 1
    end
  end
  return node
end

-- certificates([names]): a CA, and a certificate it signed for localhost
-- and 127.0.0.1 (or the subject alternative names given, as openssl
-- writes them: "DNS:localhost"), made with openssl in a directory of
-- their own under the spec's: {ca =, cert =, key =} (paths).
function S.certificates(names)
  local base = S.dir or S.tmpdir()
  local dir = assert(io.popen("mktemp -d " .. H.quote(base) .. "/certs-XXXXXX")):read("l")
  local status, _, err = H.sh_plain(([[
set -e
cd %s
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=spec-ca 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key 2>/dev/null
openssl req -new -key server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=%s\n' >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
  -days 2 -extfile server.ext 2>/dev/null]]):format(H.quote(dir), names or "DNS:localhost,IP:127.0.0.1"))
  assert(status == 0, "openssl could not make the certificates: " .. err)
  return { ca = dir .. "/ca.pem", cert = dir .. "/server.pem", key = dir .. "/server.key" }
end

-- Kill every process still running (SIGKILL) and remove the directory
-- (kept, with the outputs and the servers' logs, when MARKET_SPEC_KEEP is
-- set: for debugging).
function S.cleanup()
  for pid in pairs(started) do os.execute(("kill -KILL %d 2>/dev/null"):format(pid)) end
  started = {}
  if S.dir and not os.getenv("MARKET_SPEC_KEEP") then os.execute("rm -rf " .. H.quote(S.dir)) end
  S.dir, S.nservers = nil, nil
end

return S
