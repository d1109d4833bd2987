/*
** ground.h: the ground VM, the root of a program, on a libev loop.
**
** The ground VM is the only place that touches the operating system.  It
** offers readiness as ground events: a process that subscribes (as a
** participant) to one of the records below in the ground VM makes the
** ground VM watch it, and receives the same record as a message each time
** it fires; withdrawing the last such subscription stops the watch.  The
** drivers are written against these records, never against libev, so an
** event relay can carry them up from a nested VM.
**
**   market:readable(fd)    fd is readable (level-triggered)
**   market:writable(fd)    fd is writable (level-triggered)
**   market:alarm(msecs)    the wall clock (ms since the epoch) reached msecs (once)
**   market:signal(signum)  the signal arrived (libev: a signal is watched by one loop at a time)
**
** Fields must be numbers; a subscription with a wildcard watches nothing.
*/
#ifndef MK_GROUND_H
#define MK_GROUND_H

#include "vm.h"

struct ev_loop;
typedef struct mk_ground mk_ground;

/* The record types of the ground events (borrowed, live as long as any
** ground exists, created by mk_ground_new). */
extern mk_rtype *mk_ground_readable, *mk_ground_writable, *mk_ground_alarm,
    *mk_ground_signal;

/*
** A ground VM on `loop`, or on libev's default loop when loop is NULL.  The
** ground does not own the loop.  Returns NULL on allocation failure.
*/
mk_ground *mk_ground_new(struct ev_loop *loop);
mk_vm *mk_ground_vm(mk_ground *g);
struct ev_loop *mk_ground_loop(mk_ground *g);
/*
** Run until the ground VM has nothing queued and nothing to wait on (no
** ground event is watched).  Returns 0.  When the host runs the loop
** itself instead, the ground's prepare watcher runs the VM before each poll.
*/
int mk_ground_run(mk_ground *g);
/* One loop iteration that does not block; returns nonzero while there is
** something left to do. */
int mk_ground_step(mk_ground *g);
/* Watches currently active (for tests and for deciding to exit). */
size_t mk_ground_watching(const mk_ground *g);
/* Current wall-clock time in ms as the loop sees it. */
double mk_ground_now(mk_ground *g);
/* Kill every process (they see each other's absence with `reason`, borrowed),
** stop every watcher and free the ground.  The loop is left alone. */
void mk_ground_free(mk_ground *g, mk_term *reason);

#endif
