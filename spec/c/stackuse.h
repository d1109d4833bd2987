/*
** stackuse.h: how much C stack a function uses, for the C tests that check
** the bound term.h promises (static: include once per test).
*/
#ifndef MK_STACKUSE_H
#define MK_STACKUSE_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/*
** fn(arg) runs on a thread of its own whose stack is painted first; what
** it used reaches down to the lowest byte changed.  SIZE_MAX when the
** thread could not be made.  Subtract what an empty function uses.
*/
enum { STACKSIZE = 64 << 20, PAINT = 0xa5 };

typedef struct Job { void (*fn)(void *); void *arg; } Job;

static void *runjob (void *j) {
  ((Job *)j)->fn(((Job *)j)->arg);
  return NULL;
}

/* Not instrumented: the sanitizer's redzones on that stack are none of
** this reader's business. */
__attribute__((no_sanitize_address))
static size_t painted_used (const unsigned char *stk) {
  size_t i = 0;
  while (i < STACKSIZE && stk[i] == PAINT) i++;
  return STACKSIZE - i;
}

static size_t stack_used (void (*fn)(void *), void *arg) {
  unsigned char *stk = aligned_alloc(4096, STACKSIZE);
  pthread_attr_t attr;
  pthread_t th;
  Job j;
  size_t used = SIZE_MAX;
  if (stk == NULL) return used;
  j.fn = fn;
  j.arg = arg;
  memset(stk, PAINT, STACKSIZE);
  pthread_attr_init(&attr);
  if (pthread_attr_setstack(&attr, stk, STACKSIZE) == 0 &&
      pthread_create(&th, &attr, runjob, &j) == 0) {
    pthread_join(th, NULL);
    used = painted_used(stk);
  }
  pthread_attr_destroy(&attr);
  free(stk);
  return used;
}

/* The bound term.h promises, in bytes a level of a term, with room for
** the sanitizers' larger frames. */
#if defined(__SANITIZE_ADDRESS__)
#define PERLEVEL  320
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PERLEVEL  320
#endif
#endif
#ifndef PERLEVEL
#define PERLEVEL  160
#endif

#endif
