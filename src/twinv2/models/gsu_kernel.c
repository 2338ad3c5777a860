/* The GSU in one pass per sample: relevance and the exact top-k (models/native.py compiles and calls it).

   For samples b in [b0, b1) of a padded (B, L) sequence:

       score[b, l] = u[b] . table[rows[b, l]] + sum_j ctab_j[cross[b, l, j]] + log_n[b, l]   (-inf where !mask)

   summed in the order written, as search.relevance's torch path sums. Nothing of size (B, L, D) exists and the
   work is O(B L D): each position reads its item's row once. The rows are random, so the row of position
   l + AHEAD is prefetched while position l is summed (2.6x faster at L = 10,000 over a 200,000-item table on
   one core: 46 vs 119 ms for B = 256).

   Then the k positions with the largest (score, position) keys, in descending key order: exactly
   search.topk_exact's choice and order (ties go to the later position, padding only after every valid one),
   by a min-heap of the k largest keys kept while the scores are computed, then a sort of the k. Keys are
   distinct, so the result is unique. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AHEAD 16 /* prefetch distance in positions */

/* search._order_key: float bits mapped to an int32 of the same order (-0.0 folded into +0.0), times L, plus l. */
static inline int64_t order_key(float s, int64_t l, int64_t L) {
    union { float f; int32_t i; } v = {s + 0.0f};
    int32_t bits = v.i ^ ((v.i >> 31) & 0x7FFFFFFF);
    return (int64_t)bits * L + l;
}

/* A min-heap of the k largest keys seen so far: heap[0] is the smallest kept, so a new key costs one compare
   unless it beats it (~k ln(L/k) of the L keys do, in random order). */
static void sift_down(int64_t *heap, int64_t n, int64_t i) {
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && heap[c + 1] < heap[c]) c++;
        if (heap[i] <= heap[c]) return;
        int64_t t = heap[i]; heap[i] = heap[c]; heap[c] = t;
        i = c;
    }
}

/* The score of a key (order_key's bit map is its own inverse). */
static inline float key_score(int64_t key, int64_t L) {
    int64_t q = key / L - (key % L < 0); /* floor division */
    union { int32_t i; float f; } v = {(int32_t)q ^ ((((int32_t)q) >> 31) & 0x7FFFFFFF)};
    return v.f;
}

static int descending(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

/* scores_out (B, L) may be NULL; idx_out (B, k) may be NULL (k = 0). work: k int64 + L floats of scratch. */
void gsu_topk(int64_t b0, int64_t b1, int64_t L, int64_t D, const float *u, const float *table,
              const int32_t *rows, int64_t J, const int32_t *cross, const float *const *ctab,
              const float *log_n, const uint8_t *mask, int64_t k, float *scores_out, int64_t *idx_out,
              int64_t *work) {
    for (int64_t b = b0; b < b1; b++) {
        const float *ub = u + b * D;
        float *row = scores_out ? scores_out + b * L : (float *)(work + k);  /* this sample's scores */
        for (int64_t l = 0; l < L; l++) {
            const int64_t p = b * L + l;
            if (l + AHEAD < L) {
                const char *next = (const char *)(table + (int64_t)rows[p + AHEAD] * D);
                for (int64_t c = 0; c < D * (int64_t)sizeof(float); c += 64) __builtin_prefetch(next + c);
            }
            float s;
            if (!mask[p]) {
                s = -INFINITY;
            } else {
                const float *e = table + (int64_t)rows[p] * D;
                s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int64_t d = 0; d < D; d++) s += ub[d] * e[d];
                for (int64_t j = 0; j < J; j++) s += ctab[j][cross[p * J + j]];
                if (log_n) s += log_n[p];
            }
            row[l] = s;
        }
        if (!k) continue;
        /* A second pass over the cached scores: the first k fill the heap; after that a position can only enter
           with a score >= the smallest kept one (ties go to the later position, and l only grows). */
        for (int64_t l = 0; l < k; l++) work[l] = order_key(row[l], l, L);
        for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(work, k, i);
        float thr = key_score(work[0], L);
        for (int64_t l = k; l < L; l++) {
            if (row[l] < thr) continue; /* false for NaN: a NaN is ranked by its key, as topk_exact's keys do */
            int64_t key = order_key(row[l], l, L);
            if (key > work[0]) {
                work[0] = key;
                sift_down(work, k, 0);
                thr = key_score(work[0], L);
            }
        }
        qsort(work, (size_t)k, sizeof(int64_t), descending);  /* k <= L: the heap is full */
        for (int64_t i = 0; i < k; i++) {
            int64_t r = work[i] % L;
            idx_out[b * k + i] = r < 0 ? r + L : r; /* C's % keeps the sign of a negative key */
        }
    }
}
