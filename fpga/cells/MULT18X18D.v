// Simulation model of the ECP5 sysDSP 18x18 multiplier (MULT18X18D), for the subset Celosia
// instantiates: A and B optionally registered, the product optionally through the pipeline and
// output registers, each register on CLK0..CLK3 with CE0..CE3 and a synchronous RST0..RST3,
// signed or unsigned operands. Written from the sysDSP usage guide's description of the slice,
// for checking the instantiation against its behavioural twin and for gate-level simulation of
// synthesised netlists (Yosys ships no model of this cell). Anything outside that subset stops
// the simulation instead of being modelled wrongly.
`default_nettype none
module MULT18X18D (
    input  wire A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
    input  wire B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
    input  wire C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0,
    input  wire SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input  wire CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0,
    input  wire SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9,
    input  wire SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0,
    input  wire SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9,
    input  wire SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0,
    output wire P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20,
    output wire P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2,
    output wire P1, P0,
    output wire SIGNEDP
);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTA_CE = "CE0";
    parameter REG_INPUTA_RST = "RST0";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_INPUTB_CE = "CE0";
    parameter REG_INPUTB_RST = "RST0";
    parameter REG_INPUTC_CLK = "NONE";
    parameter REG_INPUTC_CE = "CE0";
    parameter REG_INPUTC_RST = "RST0";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_PIPELINE_CE = "CE0";
    parameter REG_PIPELINE_RST = "RST0";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter REG_OUTPUT_CE = "CE0";
    parameter REG_OUTPUT_RST = "RST0";
    parameter CLK0_DIV = "ENABLED";
    parameter CLK1_DIV = "ENABLED";
    parameter CLK2_DIV = "ENABLED";
    parameter CLK3_DIV = "ENABLED";
    parameter HIGHSPEED_CLK = "NONE";
    parameter GSR = "ENABLED";
    parameter CAS_MATCH_REG = "FALSE";
    parameter SOURCEB_MODE = "B_SHIFT";
    parameter MULT_BYPASS = "DISABLED";
    parameter RESETMODE = "SYNC";

    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    wire [3:0] clk = {CLK3, CLK2, CLK1, CLK0};
    wire [3:0] ce = {CE3, CE2, CE1, CE0};
    wire [3:0] rst = {RST3, RST2, RST1, RST0};

    function integer sel;   // "CLKn"/"CEn"/"RSTn" -> n, "NONE" -> -1
        input [8*4-1:0] name;
        begin
            case (name[7:0])
                "0": sel = 0; "1": sel = 1; "2": sel = 2; "3": sel = 3;
                default: sel = -1;
            endcase
        end
    endfunction

    initial begin
        if (MULT_BYPASS != "DISABLED" || SOURCEB_MODE != "B_SHIFT" || HIGHSPEED_CLK != "NONE" ||
            RESETMODE != "SYNC" || REG_INPUTC_CLK != "NONE")
            $fatal(1, "MULT18X18D model: unsupported configuration");
    end

    wire [18:0] a_s, b_s;
    wire [35:0] p_pipe, p_out;
    wire signed [37:0] product = $signed(a_s) * $signed(b_s);
    celosia_dsp_stage #(.WIDTH(19), .CLK(sel(REG_INPUTA_CLK)), .CE(sel(REG_INPUTA_CE)),
                        .RST(sel(REG_INPUTA_RST)))
        stage_a (.clk(clk), .ce(ce), .rst(rst), .d({SIGNEDA & a[17], a}), .q(a_s));
    celosia_dsp_stage #(.WIDTH(19), .CLK(sel(REG_INPUTB_CLK)), .CE(sel(REG_INPUTB_CE)),
                        .RST(sel(REG_INPUTB_RST)))
        stage_b (.clk(clk), .ce(ce), .rst(rst), .d({SIGNEDB & b[17], b}), .q(b_s));
    celosia_dsp_stage #(.WIDTH(36), .CLK(sel(REG_PIPELINE_CLK)), .CE(sel(REG_PIPELINE_CE)),
                        .RST(sel(REG_PIPELINE_RST)))
        stage_pipe (.clk(clk), .ce(ce), .rst(rst), .d(product[35:0]), .q(p_pipe));
    celosia_dsp_stage #(.WIDTH(36), .CLK(sel(REG_OUTPUT_CLK)), .CE(sel(REG_OUTPUT_CE)),
                        .RST(sel(REG_OUTPUT_RST)))
        stage_out (.clk(clk), .ce(ce), .rst(rst), .d(p_pipe), .q(p_out));

    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20,
            P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2,
            P1, P0} = p_out;
    assign SIGNEDP = SIGNEDA | SIGNEDB;
endmodule

// One register stage of the slice: loads d on the rising edge of clk[CLK] when ce[CE] is high,
// clears on the synchronous rst[RST]; a wire when CLK is -1 ("NONE").
module celosia_dsp_stage #(parameter WIDTH = 1, parameter CLK = -1, parameter CE = 0,
                           parameter RST = 0) (
    input wire [3:0] clk, ce, rst,
    input wire [WIDTH-1:0] d,
    output wire [WIDTH-1:0] q
);
    generate
        if (CLK < 0) begin : comb
            assign q = d;
        end else begin : registered
            reg [WIDTH-1:0] r = 0;
            always @(posedge clk[CLK])
                if (rst[RST]) r <= 0;
                else if (ce[CE]) r <= d;
            assign q = r;
        end
    endgenerate
endmodule
