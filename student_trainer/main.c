#include <stdio.h>
int main(void) {
    puts("student-trainer");
    return 0;
}
