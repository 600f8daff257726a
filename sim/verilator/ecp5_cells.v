// Behavioural models of the ECP5 cells LiteDRAM's standalone core instantiates (GENSDRPHY's
// I/O registers and pads, the CRG's reset synchroniser), for simulation (the Verilated
// harnesses). Synthesis uses Yosys's own cells, not these.
//
// The *X (preset-type) registers start at 1, as the global set/reset leaves them after
// configuration: so the SDRAM pins idle as DESELECT with CKE high before the core's first
// clock edge, as on the board.

module OFS1P3BX (input D, input SP, input SCLK, input PD, output reg Q = 1'b1);
    always @(posedge SCLK or posedge PD)
        if (PD) Q <= 1'b1;
        else if (SP) Q <= D;
endmodule

module IFS1P3BX (input D, input SP, input SCLK, input PD, output reg Q = 1'b1);
    always @(posedge SCLK or posedge PD)
        if (PD) Q <= 1'b1;
        else if (SP) Q <= D;
endmodule

module FD1S3BX (input D, input CK, input PD, output reg Q = 1'b1);
    always @(posedge CK or posedge PD)
        if (PD) Q <= 1'b1;
        else Q <= D;
endmodule

// A pad: T high leaves B to the outside world.
module TRELLIS_IO #(parameter DIR = "INPUT") (inout B, input I, input T, output O);
    assign B = (DIR != "INPUT" && !T) ? I : 1'bz;
    assign O = B;
endmodule
