/*
** cgroup.c: the memory limit of the control group this program runs in
** (pool.h, mk_cgroup_memory_max), read from the cgroup file system.
**
** The interpreter takes its default memory limit from it (lua/main.c):
** inside a container or a systemd unit with MemoryMax, the kernel kills
** the whole program at that limit, where the pool's limit fails only the
** process that ran memory out.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

/* The number in the file at path (its first line), or 0 when there is no
** such file, it says "max", or it is not a number. */
static size_t number_in(const char *path) {
  FILE *f = fopen(path, "r");
  char line[64];
  unsigned long long v;
  char *end;
  if (f == NULL) return 0;
  if (fgets(line, sizeof line, f) == NULL) line[0] = '\0';
  fclose(f);
  v = strtoull(line, &end, 10);
  if (end == line || (*end != '\n' && *end != '\0')) return 0;
  /* cgroup v1 says "no limit" as the largest multiple of the page size
  ** that fits a signed 64-bit number */
  if (v == 0 || v >= (1ULL << 62) || v > (unsigned long long)SIZE_MAX) return 0;
  return (size_t)v;
}

/* The least limit in file `leaf` of the directory mount/sub/rel and of
** each directory above it up to mount/sub itself (a limit on a parent holds its
** children too; inside a container the group's path is often the host's,
** which the container's mount does not have, and its own group is the
** mount's root); 0 if none has one.  rel starts with '/'. */
static size_t least_up(const char *mount, const char *sub, const char *rel, const char *leaf) {
  size_t ml = strlen(mount) + strlen(sub), rl = strlen(rel), ll = strlen(leaf), best = 0;
  char *path = malloc(ml + rl + ll + 3);
  char *cut;
  if (path == NULL) return 0;
  strcpy(path, mount);
  strcat(path, sub);
  memcpy(path + ml, rel, rl + 1);
  for (;;) {
    size_t n = strlen(path), v;
    while (n > ml && path[n - 1] == '/') path[--n] = '\0';
    path[n] = '/';
    memcpy(path + n + 1, leaf, ll + 1);
    v = number_in(path);
    if (v != 0 && (best == 0 || v < best)) best = v;
    path[n] = '\0';
    if (n <= ml || (cut = strrchr(path + ml, '/')) == NULL) break;
    *cut = '\0';
  }
  free(path);
  return best;
}

size_t mk_cgroup_memory_max(const char *self, const char *mount) {
  FILE *f;
  char *line = NULL;
  size_t cap = 0, best = 0;
  ssize_t got;
  if (self == NULL) self = "/proc/self/cgroup";
  if (mount == NULL) mount = "/sys/fs/cgroup";
  if ((f = fopen(self, "r")) == NULL) return 0;
  /* Lines "ID:CONTROLLERS:PATH": "0::PATH" is the unified hierarchy (v2),
  ** a CONTROLLERS list with "memory" in it the v1 memory controller's. */
  while ((got = getline(&line, &cap, f)) > 0) {
    char *c1 = strchr(line, ':'), *c2, *rel, *ctl, *save;
    size_t v;
    if (line[got - 1] == '\n') line[got - 1] = '\0';
    if (c1 == NULL || (c2 = strchr(c1 + 1, ':')) == NULL) continue;
    *c2 = '\0';
    rel = c2 + 1;
    if (rel[0] != '/') continue;
    if (c1[1] == '\0') {
      v = least_up(mount, "", rel, "memory.max");
    } else {
      for (ctl = strtok_r(c1 + 1, ",", &save); ctl != NULL; ctl = strtok_r(NULL, ",", &save))
        if (strcmp(ctl, "memory") == 0) break;
      if (ctl == NULL) continue;
      v = least_up(mount, "/memory", rel, "memory.limit_in_bytes");
    }
    if (v != 0 && (best == 0 || v < best)) best = v;
  }
  free(line);
  fclose(f);
  return best;
}
