/*
 * TEST-ONLY stand-in for Windows' bcryptprimitives.dll, for running the protocol crate's tests under wine.
 *
 * Rust's standard library for x86_64-pc-windows-gnu imports ProcessPrng from bcryptprimitives.dll (its
 * HashMap seeds and the getrandom crate use it), and Debian's wine 8 ships no such DLL, so a test program
 * fails to start there (status c0000135, a DLL not found). scripts/windows-test.sh builds this file with
 * mingw into a throwaway wine prefix under target/ and nowhere else: it is never installed, packaged or
 * shipped, and a real Windows has its own.
 *
 * ProcessPrng (documented by Microsoft as `BOOL ProcessPrng(PBYTE pbData, SIZE_T cbData)`, which always
 * returns TRUE) fills the buffer from the system's random source, RtlGenRandom (exported by advapi32.dll as
 * SystemFunction036; wine implements it). Since callers rely on it never failing, a failure of the source
 * ends the process instead of handing back a buffer that is not random.
 */
#include <windows.h>

/* RtlGenRandom, declared here as ntsecapi.h does, under its exported name. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            ExitProcess(0xC0000001); /* STATUS_UNSUCCESSFUL */
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
