/*
** fuzz_cbor.c: libFuzzer target for terms on the wire (runtime/cbor.[ch]).
**
** The input is decoded as it comes, after a first byte that sets the
** depth and size limits low (so that short inputs reach them) and says
** whether to put the version wrapper in front (so that the fuzzer need
** not find its seven bytes before it reaches the terms).  Whatever
** decodes must be within the limits, encode, decode back to an equal term
** of the same size and depth, and encode again to the same bytes (the
** encoding of a term is one).  Whatever does not decode must give a
** reason.  Nothing may be left behind (mk_term_live).
**
** And the decoder must agree with its reference: runtime/cbor.c built a
** second time below with every head read by libcbor (MK_CBOR_LIBCBOR_HEADS)
** must decode the same inputs to equal terms and refuse the others with
** the same reason, and write the same bytes; mk_cbor_append must write
** them too, past the wrapper, after whatever the buffer held.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "term.h"
#include "cbor.h"

/* The reference decoder: its public names renamed, its statics its own. */
#define MK_CBOR_LIBCBOR_HEADS 1
#define mk_cbor_encode ref_cbor_encode
#define mk_cbor_decode ref_cbor_decode
#define mk_cbor_append ref_cbor_append
#define mk_cbor_head_len ref_cbor_head_len
#define mk_cbor_put_head ref_cbor_put_head
#define mk_cbor_head ref_cbor_head
#define mk_cbor_item_end ref_cbor_item_end
#include "../../runtime/cbor.c"
#undef mk_cbor_encode
#undef mk_cbor_decode
#undef mk_cbor_append
#undef mk_cbor_head_len
#undef mk_cbor_put_head
#undef mk_cbor_head
#undef mk_cbor_item_end

#define CHECK(e) do { if (!(e)) { \
  fprintf(stderr, "fuzz_cbor: %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #e); \
  abort(); } } while (0)

static const unsigned char wrap[] = { 0xda, 0x6d, 0x6b, 0x00, 0x00, 0x82, 0x01 };

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size) {
  size_t base = mk_term_live(), n, len = 0, len2 = 0, cap;
  unsigned char *in, *b, *b2;
  const char *why = NULL, *refwhy = NULL;
  mk_term *t, *u;
  unsigned first;
  if (size == 0) return 0;
  first = data[0];
  data++;
  size--;
  CHECK(mk_term_set_depth_limit(1 + (first >> 2) % 48) == 0);
  CHECK(mk_term_set_size_limit(first & 2 ? 1 + (first >> 2) * 4 : MK_TERM_SIZE_DEFAULT) == 0);
  n = (first & 1 ? sizeof wrap : 0) + size;
  in = malloc(n ? n : 1);
  CHECK(in != NULL);
  if (first & 1) memcpy(in, wrap, sizeof wrap);
  if (size > 0) memcpy(in + n - size, data, size);
  t = mk_cbor_decode(in, n, &why);
  u = ref_cbor_decode(in, n, &refwhy);
  CHECK((t == NULL) == (u == NULL));
  /* Framing (mk_cbor_item_end) ends within the input, and where a term's
  ** encoding (the wrapper's one item) ends when it decodes. */
  len = mk_cbor_item_end(in, n, 0);
  CHECK(len <= n && (t == NULL || len == n));
  if (t == NULL) {
    CHECK(why != NULL && refwhy != NULL && strcmp(why, refwhy) == 0);
  } else {
    CHECK(mk_equal(t, u) && mk_term_size(u) == mk_term_size(t) && u->depth == t->depth);
    mk_unref(u);
    CHECK(t->depth <= mk_term_depth_limit() && mk_term_size(t) <= mk_term_size_limit());
    b = mk_cbor_encode(t, &len);
    CHECK(b != NULL && len <= n + 8 * mk_term_size(t));
    u = mk_cbor_decode(b, len, &why);
    CHECK(u != NULL && mk_equal(t, u) && mk_term_size(u) == mk_term_size(t) &&
          u->depth == t->depth);
    b2 = mk_cbor_encode(u, &len2);
    CHECK(b2 != NULL && len2 == len && memcmp(b, b2, len) == 0);
    free(b2);
    b2 = ref_cbor_encode(t, &len2);
    CHECK(b2 != NULL && len2 == len && memcmp(b, b2, len) == 0);
    free(b2);
    /* appended after n bytes of a buffer of 5 (grown as it goes) */
    cap = 5;
    b2 = malloc(cap);
    CHECK(b2 != NULL);
    memset(b2, 0xee, cap);
    len2 = first % 6;
    CHECK(mk_cbor_append(t, &b2, &len2, &cap) == 0);
    CHECK(cap >= len2 && len2 == first % 6 + len - sizeof wrap);
    CHECK(memcmp(b2 + first % 6, b + sizeof wrap, len - sizeof wrap) == 0);
    /* the term alone is one item, framed to its end */
    CHECK(mk_cbor_item_end(b2, len2, first % 6) == len2);
    for (n = 0; n < first % 6; n++) CHECK(b2[n] == 0xee);
    free(b);
    free(b2);
    mk_unref(u);
    mk_unref(t);
  }
  {                      /* a head written reads back, in as many bytes */
    unsigned char h[9];
    size_t at = 0, hl;
    unsigned mt;
    uint64_t v = 0, w;
    for (n = 0; n < 8 && n < size; n++) v = v << 8 | data[n];
    v >>= (first >> 2) % 64;
    hl = mk_cbor_put_head(h, first >> 5, v);
    CHECK(hl == mk_cbor_head_len(v) && hl <= sizeof h);
    CHECK(mk_cbor_head(h, hl, &at, &mt, &w) == 0 && at == hl && mt == first >> 5 && w == v);
    CHECK(mk_cbor_head(h, hl - 1, &(size_t){0}, &mt, &w) == -1);
  }
  free(in);
  CHECK(mk_term_live() == base);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_DEFAULT) == 0);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_DEFAULT) == 0);
  return 0;
}
