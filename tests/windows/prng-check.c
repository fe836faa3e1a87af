/*
 * TEST-ONLY: checks the bcryptprimitives.dll stand-in (bcryptprimitives.c) before the protocol crate's tests
 * rely on it: ProcessPrng must return TRUE and fill the buffer with bytes that are not a constant, neither all
 * zero nor the same twice. scripts/windows-test.sh runs it under wine in the test prefix; exit 0 means good.
 */
#include <stdio.h>
#include <string.h>
#include <windows.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length);

int main(void)
{
    static const BYTE zero[64];
    BYTE first[64], second[64];
    memset(first, 0, sizeof first);
    memset(second, 0, sizeof second);
    if (!ProcessPrng(first, sizeof first) || !ProcessPrng(second, sizeof second)) {
        fprintf(stderr, "prng-check: ProcessPrng returned FALSE\n");
        return 1;
    }
    if (!memcmp(first, zero, sizeof zero) || !memcmp(second, zero, sizeof zero)) {
        fprintf(stderr, "prng-check: ProcessPrng left 64 bytes zero\n");
        return 1;
    }
    if (!memcmp(first, second, sizeof first)) {
        fprintf(stderr, "prng-check: ProcessPrng gave the same 64 bytes twice\n");
        return 1;
    }
    printf("prng-check: ProcessPrng fills buffers with random bytes\n");
    return 0;
}
