/*
** check.h: the tiny harness of the C tests.  Each test is a function; each
** CHECK that fails marks the running test failed with file:line and the
** expression.  Output is one line per test, "ok NAME" or "not ok NAME", and
** a last line "C: N passed, N failed" that spec/run sums with busted's.
*/
#ifndef MK_CHECK_H
#define MK_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int check_failed_now, check_passed, check_failed;

#define CHECK(e) do { if (!(e)) { check_failed_now = 1; \
  fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #e); } } while (0)

#define RUN(fn) do { check_failed_now = 0; fn(); \
  if (check_failed_now) { check_failed++; printf("not ok %s\n", #fn); } \
  else { check_passed++; printf("ok %s\n", #fn); } fflush(stdout); } while (0)

#define CHECK_DONE() (printf("C: %d passed, %d failed\n", check_passed, check_failed), \
  check_failed ? 1 : 0)

#endif
