#!/usr/bin/perl
# spec/support/abuse.pl: misbehaving TCP clients for spec/tcp_abuse_spec.lua
# (perl: on every Debian system, and it has what nc and socat lack: resets
# on demand, byte-at-a-time writes, many sockets in one process).  Loopback
# only; every mode ends by itself within its time bound.
#
#   abuse.pl send PORT FILE           write FILE, half-close, print what comes
#                                     back; exit 0 on an orderly end of
#                                     stream, 3 if the connection was reset
#   abuse.pl bytes PORT FILE USECS    the same, one byte per write (Nagle
#                                     off), pausing USECS between bytes
#   abuse.pl mute PORT N SECS         N connections that never read nor
#                                     write (with small receive buffers),
#                                     held SECS seconds
#   abuse.pl reset PORT N             N connections, each closed with a
#                                     reset as soon as it is made
#   abuse.pl hold PORT N SECS         N connections; after SECS seconds
#                                     print "open K closed M" (M: closed by
#                                     the server), then send "ping\n" on the
#                                     open ones and print "echoed E" (those
#                                     answered within 5 s); then close all
#   abuse.pl again PORT FILE          a connection closed with a reset once
#                                     FILE exists (the server has taken
#                                     it), then at once another from the
#                                     same address (127.0.0.2) and port;
#                                     prints what that one reads
#                                     in 1.5 s, or until end of stream
#   abuse.pl chatter PORT N ROUNDS    N connections, all open first; each
#                                     round writes on every one a message
#                                     of its own (20 bytes to 4 KiB), then
#                                     reads each back; prints "ok K bad B"
#                                     (messages echoed intact, or not
#                                     within 10 s), then closes all
use strict;
use warnings;
use Socket qw(PF_INET SOCK_STREAM IPPROTO_TCP TCP_NODELAY SOL_SOCKET SO_LINGER SO_RCVBUF
              SO_REUSEADDR inet_aton pack_sockaddr_in unpack_sockaddr_in);
use IO::Handle;
use IO::Select;
use Errno qw(ECONNRESET EPIPE);
use Time::HiRes qw(usleep time);

$SIG{PIPE} = 'IGNORE';
my ($mode, $port, @rest) = @ARGV;
my $addr = pack_sockaddr_in($port, inet_aton("127.0.0.1"));

sub conn {
  my ($rcvbuf) = @_;
  socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
  setsockopt($s, SOL_SOCKET, SO_RCVBUF, $rcvbuf) if $rcvbuf;
  connect($s, $addr) or return undef;
  return $s;
}

sub slurp { local $/; open(my $f, '<', $_[0]) or die "$_[0]: $!"; binmode $f; return <$f>; }

# Read until end of stream; print it; exit 0, or 3 on a reset.
sub finish {
  my ($s, $reset) = @_;
  my $got = '';
  while (!$reset) {
    my $n = sysread($s, my $buf, 65536);
    if (!defined $n) { $reset = 1 if $! == ECONNRESET; last; }
    last if $n == 0;
    $got .= $buf;
  }
  binmode STDOUT;
  print $got;
  exit($reset ? 3 : 0);
}

if ($mode eq 'send' || $mode eq 'bytes') {
  my ($file, $usecs) = @rest;
  my $data = slurp($file);
  my $s = conn() or die "connect: $!";
  my $reset = 0;
  if ($mode eq 'send') {
    my $off = 0;
    while ($off < length $data) {
      my $n = syswrite($s, $data, length($data) - $off, $off);
      if (!defined $n) { $reset = 1 if $! == ECONNRESET || $! == EPIPE; last; }
      $off += $n;
    }
  } else {
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    for my $i (0 .. length($data) - 1) {
      my $n = syswrite($s, substr($data, $i, 1));
      if (!defined $n) { $reset = 1 if $! == ECONNRESET || $! == EPIPE; last; }
      usleep($usecs) if $usecs;
    }
  }
  shutdown($s, 1) unless $reset;
  finish($s, $reset);
} elsif ($mode eq 'mute') {
  my ($n, $secs) = @rest;
  my @socks = grep { defined } map { conn(4096) } 1 .. $n;
  sleep $secs;
} elsif ($mode eq 'hold') {
  my ($n, $secs) = @rest;
  my @socks = grep { defined } map { conn() } 1 .. $n;
  my $sel = IO::Select->new(@socks);
  my $closed = $n - @socks;
  my $until = time + $secs;
  while (time < $until) {
    for my $s ($sel->can_read(0.05)) {
      my $r = sysread($s, my $buf, 4096);
      if (!defined $r || $r == 0) { $sel->remove($s); close $s; $closed++; }
    }
  }
  print "open ", scalar($sel->count), " closed $closed\n";
  my %got;
  syswrite($_, "ping\n") for $sel->handles;
  $until = time + 5;
  while (keys(%got) < $sel->count && time < $until) {
    for my $s ($sel->can_read(0.05)) {
      my $r = sysread($s, my $buf, 4096);
      if ($r) { $got{fileno $s} .= $buf; } else { $sel->remove($s); }
    }
  }
  print "echoed ", scalar(grep { $_ eq "ping\n" } values %got), "\n";
} elsif ($mode eq 'chatter') {
  my ($n, $rounds) = @rest;
  my @socks = grep { defined } map { conn() } 1 .. $n;
  my ($ok, $bad) = (0, $n - @socks);
  setsockopt($_, IPPROTO_TCP, TCP_NODELAY, 1) for @socks;
  for my $r (1 .. $rounds) {
    my (%want, %got);
    for my $i (0 .. $#socks) {
      my $s = $socks[$i];
      # A message no other connection or round sends, of a size that
      # varies with both: a session that got another's bytes shows.
      my $m = sprintf("conn %04d round %03d ", $i, $r);
      $m .= chr(65 + ($i + $r) % 26) x (($i * 37 + $r * 101) % 4073);
      $want{fileno $s} = $m;
      $got{fileno $s} = '';
      syswrite($s, $m) == length($m) or $bad++;
    }
    my $sel = IO::Select->new(@socks);
    my $until = time + 10;
    while ($sel->count && time < $until) {
      for my $s ($sel->can_read(0.05)) {
        my $len = sysread($s, my $buf, 65536);
        if (!$len) { $sel->remove($s); next; }
        $got{fileno $s} .= $buf;
        $sel->remove($s) if length($got{fileno $s}) >= length($want{fileno $s});
      }
    }
    for my $f (keys %want) { $got{$f} eq $want{$f} ? $ok++ : $bad++; }
  }
  print "ok $ok bad $bad\n";
  close $_ for @socks;
} elsif ($mode eq 'again') {
  # Both from 127.0.0.2: the port the first one had is free between the
  # reset and the second bind, and a connect from 127.0.0.1 elsewhere on
  # the machine (the specs' own clients all come from there) could take
  # it in between; on this address only a listener on the wildcard
  # address that drew that very port could.
  my ($file) = @rest;
  my $here = inet_aton("127.0.0.2");
  my $from_here = sub {   # a connection from $here, port $_[0] (0: any)
    my ($port, $what) = @_;
    socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
    setsockopt($s, SOL_SOCKET, SO_REUSEADDR, 1);
    bind($s, pack_sockaddr_in($port, $here)) or die "bind: $!";
    connect($s, $addr) or die "$what: $!";
    return $s;
  };
  my $a = $from_here->(0, "connect");
  my ($from) = unpack_sockaddr_in(getsockname($a));
  for (1 .. 500) { last if -e $file; usleep(20_000); }
  setsockopt($a, SOL_SOCKET, SO_LINGER, pack("ii", 1, 0));
  close $a;
  my $b = $from_here->($from, "connect again");
  my ($got, $until) = ('', time + 1.5);
  my $sel = IO::Select->new($b);
  while ((my $left = $until - time) > 0) {
    last unless $sel->can_read($left);
    my $n = sysread($b, my $buf, 65536);
    last if !$n;
    $got .= $buf;
  }
  binmode STDOUT;
  print $got;
} elsif ($mode eq 'reset') {
  my ($n) = @rest;
  for (1 .. $n) {
    my $s = conn() or next;
    setsockopt($s, SOL_SOCKET, SO_LINGER, pack("ii", 1, 0));
    close $s;
  }
} else {
  die "usage: abuse.pl send|bytes|mute|reset|again|hold|chatter PORT ...\n";
}
