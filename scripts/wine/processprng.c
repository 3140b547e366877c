/* Wine 8 lacks ProcessPrng (bcryptprimitives.dll), which Rust's std
 * imports on Windows: every .exe would exit with code 53. This stub
 * exports it, filling the buffer through RtlGenRandom (SystemFunction036,
 * advapi32). Used only for the Wine test runs (scripts/wine-test.sh). */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
