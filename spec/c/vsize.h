/*
** vsize.h: the address space a test process uses now, for the C tests that
** cap it (RLIMIT_AS) at that and a margin (static: include once per test).
*/
#ifndef MK_VSIZE_H
#define MK_VSIZE_H

#include <stdio.h>
#include <unistd.h>

/* Bytes of address space in use, from /proc (0 when it cannot be read). */
static size_t vsize (void) {
  unsigned long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%lu", &pages) != 1) pages = 0;
  fclose(f);
  return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

#endif
