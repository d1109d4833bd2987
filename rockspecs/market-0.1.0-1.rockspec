-- The market rock: the Lua module market.so (with market.timer, .tcp,
-- .udp, .event_relay, .http and the rest, which it holds) and the interpreter `market`.
-- From the root of a checkout (docs/packaging.md):
--
--   luarocks --lua-version 5.4 make                 (into the system tree)
--   luarocks --lua-version 5.4 --tree DIR make      (into DIR)
--
-- meson and ninja build it (build type "command"): the module must not
-- link liblua (lua5.4 has the VM linked in) while the interpreter must,
-- and the Lua halves of the modules are compiled into the .so, which the
-- "builtin" type cannot express.  Needs what meson does
-- (docs/packaging.md): meson, ninja-build, pkg-config, a C compiler,
-- liblua5.4-dev, libev-dev, libcbor-dev, libhttp-parser-dev, libwslay-dev, libmd-dev,
-- libpsl-dev, libnats-dev, libssl-dev, and lua5.4 itself (it runs at build
-- time).
-- The C library and headers for embedders are `meson install`'s, not the
-- rock's (docs/embedding.md).
rockspec_format = "3.0"
package = "market"
version = "0.1.0-1"
source = {
  -- market has no public repository: the rock is built from a checkout
  -- by `luarocks make`, which builds in the current directory and never
  -- fetches this.
  url = "git+file://.",
}
description = {
  summary = "Actor programs in Lua on the model of Marketplace, on libev",
  detailed = [[
Processes live in nested virtual machines and talk only through
pattern-routed publish/subscribe conversations, in which the presence and
absence of peers are events. Drivers connect conversations to the world:
TCP (with TLS), UDP, timers, and an event relay for nested VMs.]],
  license = "MIT",
  labels = { "actors", "concurrency", "networking", "libev" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  LIBEV = { header = "ev.h", library = "ev" },
  LIBCBOR = { header = "cbor.h", library = "cbor" },
  HTTP_PARSER = { header = "http_parser.h", library = "http_parser" },
  WSLAY = { header = "wslay/wslay.h", library = "wslay" },
  LIBMD = { header = "sha1.h", library = "md" },
  LIBPSL = { header = "libpsl.h", library = "psl" },
  LIBNATS = { header = "nats/nats.h", library = "nats" },
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
}
build = {
  type = "command",
  build_command = [[
if [ ! -f build-rock/build.ninja ]; then
  meson setup build-rock --buildtype=release
fi && ninja -C build-rock market lua/market.so]],
  install = {
    lib = { market = "build-rock/lua/market.so" },
    bin = { market = "build-rock/market" },
  },
}
