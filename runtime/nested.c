/*
** nested.c: a VM as a process of its parent VM (DESIGN §1, nested_vm).
**
** The nested VM's data is its inner mk_vm.  Each event the parent gives it
** is forwarded to the child that asked for it, then the inner VM runs until
** it has nothing queued, and what its processes did at meta level is
** performed in the parent on behalf of the nested-VM process.
**
** Naming.  A child `c` adding endpoint "e" at meta level makes the nested-VM
** process own endpoint "c/e" in the parent; an event on "c/e" comes back to
** `c` as a meta event on "e".  Two levels up the name is "n/c/e", and so on:
** each level strips one "pid/" prefix on the way down.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmint.h"

static char *prefixed(mk_pid pid, const char *name) {
  size_t n = strlen(name);
  char *s = mkI_xmalloc(n + 24);
  snprintf(s, n + 24, "%llu/%s", (unsigned long long)pid, name);
  return s;
}

/* Rename the endpoints in a list made by child `pid` for the level above,
** and wrap its spawn continuations so that the new pid finds its way back
** to that child (handle, MK_EV_SPAWNED). */
static void prefix_names(mk_action *a, mk_pid pid) {
  for (; a; a = a->next) {
    if (a->type == MK_A_ADD || a->type == MK_A_DELETE || a->type == MK_A_DROP) {
      char *s = prefixed(pid, a->name);
      free(a->name);
      a->name = s;
    } else if (a->type == MK_A_META) {
      prefix_names(a->list, pid);
    } else if (a->type == MK_A_SPAWN && a->cont != NULL) {
      mkI_cont *c = mkI_xmalloc(sizeof *c);
      c->pid = pid;
      c->inner = a->cont;
      c->wrapped = a->cont_wrapped;
      a->cont = c;
      a->cont_wrapped = 1;
    }
  }
}

void mkI_cont_free(mkI_cont *c) {
  while (c != NULL) {
    mkI_cont *inner = c->wrapped ? c->inner : NULL;
    free(c);
    c = inner;
  }
}

/* A spawn made for a child took place (or never will): its pid goes down
** to the child, whose own token it carries. */
static void spawned(mk_vm *vm, mkI_cont *c, mk_pid pid) {
  mk_proc *child = mk_vm_proc(vm, c->pid);
  if (child != NULL && mk_proc_alive(child)) {
    mkI_enqueue_spawned(vm, child, c->inner, pid);
    free(c);
  } else {
    mkI_cont_free(c);
  }
}

static void release_cont(mk_proc *self, void *cont) {
  (void)self;
  mkI_cont_free(cont);
}

/* A child died (`drop`, already named for this level): what it held
** further up through us goes too.  The drop travels as far as the dead
** process held endpoints, one level per nested VM on the way, so a
** process three VMs down that ends takes its ground endpoints with it
** and with its reason, whether its VMs live on or end after it. */
static void pass_up(mk_proc *self, const mk_action *drop) {
  if (drop->levels <= 1 || self->vm->parent == NULL || !mk_proc_alive(self)) return;
  mk_at_meta_level(self, mkI_drop(drop->name, drop->term, drop->levels - 1));
}

/* Perform what the inner VM's processes did at meta level. */
static void flush_outbox(mk_proc *self, mk_vm *vm) {
  mk_action *item = mk_vm_take_outbox(vm), *next;
  for (; item; item = next) {
    next = item->next;
    item->next = NULL;
    if (item->type == MK_A_META) {
      mk_action *a = item->list, *an;
      item->list = NULL;
      prefix_names(a, item->pid);
      for (; a; a = an) {
        an = a->next;
        if (a->type == MK_A_DROP) pass_up(self, a);
        mkI_perform(self, a);
      }
      mk_action_free(item);
    } else if (item->type == MK_A_DROP) {
      pass_up(self, item);
      mkI_perform(self, item);
    } else {
      mk_action_free(item);
    }
  }
}

/* 0, or -1 when the VM would be nested too deep: its process has failed. */
static int boot(mk_proc *self, mk_vm *vm) {
  mk_vm *parent = self->vm;
  size_t n = strlen(parent->path) + 24;
  vm->parent = parent;
  vm->self = self;
  /* Each level runs inside its parent's activation (handle, mk_vm_run),
  ** and keeps its path: 30,000 levels ran the C stack out (SEGV). */
  vm->depth = parent->depth + 1;
  if (vm->depth > MK_NEST_MAX) {
    mk_failf(self, "a VM nested more than %d levels deep", MK_NEST_MAX);
    return -1;
  }
  free(vm->path);
  vm->path = mkI_xmalloc(n);
  snprintf(vm->path, n, "%s/%llu", parent->path, (unsigned long long)self->pid);
  mkI_trace_inherit(vm, parent);
  mkI_detail_inherit(vm, parent);
  vm->crash = parent->crash;
  vm->crashud = parent->crashud;
  vm->userdata = parent->userdata;
  if (vm->bootb) {
    mk_vm_spawn(vm, vm->bootb, vm->bootdata, vm->bootname);
    vm->bootb = NULL;
    vm->bootdata = NULL;
  }
  return 0;
}

/*
** Turns.  Run inside a slice (the ground's, ground.h), the VM runs for
** MK_NESTED_SLICE_MS of it at most and, if events are left, queues a
** resume for itself behind what its parent has queued, and runs them then:
** a process here that makes an event for every one it gets (a message to
** itself) keeps this VM busy, not its parent, so the parent's other
** processes, and other nested VMs so busy, get their turns in between.
** Outside a slice (mk_vm_run on the parent) it runs until nothing is left.
*/
#define MK_NESTED_SLICE_MS 1

static void run(mk_proc *self, mk_vm *vm) {
  uint64_t deadline = self->vm->deadline, mine;
  if (deadline == 0) { mk_vm_run(vm); return; }
  mine = mkI_clock() + MK_NESTED_SLICE_MS * 1000000u;
  mkI_run_until(vm, mine < deadline ? mine : deadline);
  if (!mk_vm_idle(vm) && !vm->resume_queued) {
    vm->resume_queued = 1;
    mk_yield(self, NULL);
  }
}

static void handle(mk_proc *self, const mk_event *ev) {
  mk_vm *vm = self->data;
  if (ev->type == MK_EV_RESUME && ev->cont == NULL) {
    vm->resume_queued = 0;           /* ours, or a wake-up's (mk_wake) */
  } else if (ev->type == MK_EV_BOOT) {
    if (boot(self, vm) != 0) return;
  } else if (ev->type == MK_EV_SPAWNED) {
    spawned(vm, ev->cont, ev->pid);
  } else if (ev->endpoint != NULL) {
    char *end;
    unsigned long long pid = strtoull(ev->endpoint, &end, 10);
    mk_proc *child;
    if (end != ev->endpoint && *end == '/' && (child = mk_vm_proc(vm, pid)) != NULL)
      mkI_enqueue_meta(vm, child, ev, end + 1, ev->meta + 1);
    /* A resume is queued already: the event waits for it in the VM's
    ** queue.  A slice for every event was many new parent events for each
    ** (a process here that hears its own meta-level sends), which grew the
    ** parent's queue faster than it drained: its timers and signals were
    ** never reached. */
    if (vm->resume_queued) return;
  }
  run(self, vm);
  flush_outbox(self, vm);
  if (mk_vm_nprocs(vm) == 0 && mk_proc_alive(self)) mk_quit(self, 0, vm->last_reason);
}

static void destroy(mk_proc *self) {
  mk_vm *vm = self->data;
  mk_vm_free(vm, NULL);
}

/* A nested VM hears of its deleted endpoints so as to pass that on to the
** child that deleted them, if the child asked (vm.c, deliver). */
const mk_behavior mk_nested_behavior = { "nested-vm", handle, release_cont, destroy, NULL,
                                         MK_BF_TELL_DELETED, NULL, NULL };

void *mk_nested_new(mk_vm *parent_hint, const mk_behavior *b, void *data, const char *name) {
  mk_vm *vm = mk_vm_new();
  vm->bootb = b;
  vm->bootdata = data;
  vm->bootname = name ? strdup(name) : NULL;
  if (parent_hint) vm->userdata = parent_hint->userdata;
  return vm;
}
