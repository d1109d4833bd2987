-- spec/support/h.lua: helpers shared by the busted specs.
--
-- Every process of an in-process ground VM is a coroutine of the same Lua
-- state, so handlers can append to a log table the spec owns; the specs
-- then assert the exact sequence of lines.
local market = require "market"
local H = {}

-- ground(boot [, log [, opts]]): run a ground VM to completion (opts as
-- for market.ground_vm); fail the spec if ground_vm reports a boot
-- failure.  With a log, close it when boot's function returns (so teardown
-- events land in log.teardown).
function H.ground(boot, log, opts)
  local run = boot
  if log then run = function(...) boot(...); log.close() end end
  local ok, err = market.ground_vm(run, opts)
  assert(ok == true, "ground_vm failed: " .. tostring(err))
  return ok
end

-- kept(f): run f() in a ground VM's boot process, which holds an endpoint
-- meanwhile: the VM runs until f returns, whatever else ends.
function H.kept(f)
  H.ground(function()
    market.perform(market.publisher("keep", { name = "keep" }))
    f()
    market.perform(market.delete_endpoint("keep"))
  end)
end

-- A log: log(fmt, ...) appends one formatted line; log.lines is the list.
-- After log.close() the lines go to log.teardown instead (what happens
-- when the ground VM tears down the processes still holding endpoints).
function H.log()
  local self = { lines = {}, teardown = {} }
  local lines = self.lines
  function self.close() lines = self.teardown end
  return setmetatable(self, {
    __call = function(_, fmt, ...)
      local args = table.pack(...)
      for i = 1, args.n do
        if type(args[i]) ~= "string" and type(args[i]) ~= "number" then
          args[i] = H.show(args[i])
        end
      end
      lines[#lines + 1] = string.format(fmt, table.unpack(args, 1, args.n))
    end,
  })
end

-- show(v): a readable text for any value (terms through market.repr).
function H.show(v)
  if type(v) == "table" and getmetatable(v) == nil and v.orientation then
    return v.orientation .. "/" .. v.interest .. " " .. market.repr(v.topic)
  end
  if type(v) == "string" then return v end
  if market.is_term(v) then return market.repr(v) end
  return tostring(v)
end

-- role(r): "orientation/interest topic"
function H.role(r) return H.show(r) end

-- The handlers of an endpoint that logs every event as
--   "<who> presence <ep> <role>", "<who> absence <ep> <role> <reason>",
--   "<who> message <ep> <body>".
function H.logging(log, who, extra)
  local h = {
    on_presence = function(s, role, ep)
      log("%s presence %s %s", who, ep, H.role(role))
    end,
    on_absence = function(s, role, reason, ep)
      log("%s absence %s %s %s", who, ep, H.role(role), H.show(reason))
    end,
    on_message = function(s, msg, ep)
      log("%s message %s %s", who, ep, H.show(msg))
    end,
  }
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

-- A process that holds `actions` until it is told, by a message on
-- {"ctl", name, <command>}, to perform what cmds[command] returns.
-- Commands run as a transition of that process.
function H.controlled(name, cmds, ...)
  local boot_actions = table.pack(...)
  return market.spawn(function()
    return market.transition(nil,
      market.subscriber({ "ctl", name, market._ }, {
        name = "ctl",
        on_message = function(s, msg)
          local f = cmds[msg[3]]
          return market.transition(s, f())
        end,
      }),
      table.unpack(boot_actions, 1, boot_actions.n))
  end, { name = name })
end

-- ctl(name, command): the action that tells a controlled process.
function H.ctl(name, command) return market.send({ "ctl", name, command }) end

-- Straight-line helper for a boot process: perform the actions, then let
-- everything they cause run.  One pause runs what is queued now; the
-- events that produces (a spawned process's boot, the presence events its
-- endpoints cause, the handlers' reactions) need a few more rounds.
function H.settle(rounds)
  for _ = 1, rounds or 5 do market.pause() end
end

function H.step(...)
  market.perform(...)
  H.settle()
end

-- A temporary file holding `text`; returns its path.  Written into the
-- file os.tmpname made, then renamed to carry the suffix: that file is not
-- left behind in /tmp.
function H.tempfile(text, suffix)
  local base = os.tmpname()
  local path = base .. (suffix or ".lua")
  local f = assert(io.open(base, "w"))
  f:write(text)
  f:close()
  assert(os.rename(base, path))
  return path
end

-- The build under test: MARKET_BUILD, or the build whose lua/market.so
-- this Lua loads (LUA_CPATH, or .busted's cpath for a bare `busted`).
function H.build_dir()
  local dir = os.getenv("MARKET_BUILD") or package.cpath:match("([^;]*)/lua/%?%.so")
  assert(dir, "MARKET_BUILD is not set, and no build/lua/?.so is in package.cpath")
  return dir
end

-- The market interpreter of the build under test.
function H.market_bin()
  return H.build_dir() .. "/market"
end

function H.slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- sh(script): run a shell script with its output in files; returns its
-- exit status (128 + signal when killed), stdout and stderr.
function H.sh(script)
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute("(" .. script .. ") >" .. out .. " 2>" .. err)
  local o, e = H.slurp(out) or "", H.slurp(err) or ""
  os.remove(out)
  os.remove(err)
  return (how == "exit" and code or 128 + code), o, e
end

-- sh_plain(script): H.sh with the sanitizer preloads of spec/run's second
-- suite removed, for tools that are not sanitized (meson, cc, luarocks,
-- a plain build installed).
function H.sh_plain(script)
  return H.sh("env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS sh -c " .. H.quote(script))
end

-- sh_locked(dir, script): sh_plain of script under `set -e`, holding
-- dir/lock (dir made if need be), so that two runs on one checkout do not
-- build in dir at once.
function H.sh_locked(dir, script)
  return H.sh_plain(("set -e\nmkdir -p %s\nexec 9>%s/lock\nflock 9\n")
                    :format(H.quote(dir), H.quote(dir)) .. script)
end

-- scratch(what): /tmp/market-<what>-<this checkout>, a directory of its own
-- for each checkout (specs that keep a build between runs).
function H.scratch(what)
  local root = assert(io.popen("pwd")):read("l")
  return "/tmp/market-" .. what .. "-" .. root:gsub("[^%w]", "_"), root
end

-- outcome(f, file): pcall(f) as one line for a spec of misuse: "true
-- ..." or "false MESSAGE", MESSAGE without its position when the error
-- is said at a line of `file` (the spec's own: at the caller's line), and
-- marked "(not at the caller's line)" when it is not.
function H.outcome(f, file)
  local ok, err = pcall(f)
  local prefix = "^" .. file:gsub("%p", "%%%0") .. ":%d+: (.*)$"
  local rest = tostring(err):match(prefix)
  return tostring(ok) .. " " .. (rest or "(not at the caller's line) " .. tostring(err))
end

-- run(args): run the interpreter; returns status, stdout, stderr.
function H.run(args)
  return H.sh(H.market_bin() .. " " .. args .. " </dev/null")
end

function H.quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- A shell function for scripts that drive line clients (nc): `heard FILE
-- TEXT` waits, 10 s at most, until what a client has heard (FILE) holds
-- TEXT.  Steps that wait on what they answer, not on sleeps a few tenths
-- of a second apart, which a loaded machine can outrun.
H.HEARD = [[heard() { for i in $(seq 200); do grep -q "$2" "$1" && return 0; sleep 0.05; done; return 1; }]]

-- run_script(text [, options]): run a Lua script in the interpreter, with
-- options (default "--no-drivers"), for at most a minute; returns status,
-- stdout, stderr.  For cases that once crashed the whole program: a crash
-- is then a status to assert on, not a dead busted.
function H.run_script(text, options)
  local path = H.tempfile(text)
  -- (-k: a program that a stop does not end, hung, is killed)
  local status, out, err = H.sh(("timeout -k 5 60 %s %s %s </dev/null"):format(
    H.quote(H.market_bin()), options or "--no-drivers", H.quote(path)))
  os.remove(path)
  return status, out, err
end

return H
